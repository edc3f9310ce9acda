"""Unit tests of the radix tree: exact match lengths, insert, split, LRU eviction, namespaces."""

from __future__ import annotations

import pytest

from yaie.kernels.cache import RadixTree


def _tree_with(block_size: int, *entries: tuple[list[int], list[int]]) -> RadixTree:
    tree = RadixTree(block_size)
    for tokens, blocks in entries:
        tree.insert(tokens, blocks)
    tree.check_integrity()
    return tree


def test_match_covers_only_whole_blocks_of_the_query():
    """A match is the longest run of cached full blocks; a partial block never matches."""
    tree = RadixTree(4)
    assert tree.insert(list(range(10)), [7, 8, 9]) == 0  # 2 full blocks; block 9 is the tail
    assert tree.num_cached_blocks == 2
    for length, blocks in [(10, [7, 8]), (8, [7, 8]), (7, [7]), (4, [7]), (3, []), (0, [])]:
        match = tree.match_prefix(list(range(length)))
        assert (match.blocks, match.num_tokens) == (blocks, 4 * len(blocks)), length
    tree.check_integrity()


def test_match_compares_every_token_of_a_block():
    """Queries differing from the cached tokens anywhere inside a block stop before it."""
    tree = _tree_with(3, ([1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12]))
    assert tree.match_prefix([1, 2, 3, 4, 0, 6, 7, 8, 9]).blocks == [10]
    assert tree.match_prefix([1, 2, 3, 4, 5, 0, 7, 8, 9]).blocks == [10]
    assert tree.match_prefix([1, 2, 3, 4, 5, 6, 7, 8, 0]).blocks == [10, 11]
    assert tree.match_prefix([0, 2, 3, 4, 5, 6]).blocks == []
    tree.check_integrity()


def test_insert_reports_blocks_already_present_and_keeps_its_own_ids():
    """insert returns how many leading blocks were cached; the tree keeps its ids for them."""
    tree = _tree_with(2, ([1, 1, 2, 2, 3, 3], [0, 1, 2]))
    assert tree.insert([1, 1, 2, 2, 4, 4, 5], [5, 6, 7, 8]) == 2  # diverges in block 2
    assert tree.match_prefix([1, 1, 2, 2, 4, 4]).blocks == [0, 1, 7]
    assert tree.match_prefix([1, 1, 2, 2, 3, 3]).blocks == [0, 1, 2]
    assert tree.insert([1, 1, 2, 2, 3, 3], [9, 9, 9]) == 3  # all present: nothing added
    assert tree.num_cached_blocks == 4
    tree.check_integrity()


def test_insert_needs_a_block_for_every_full_block():
    tree = RadixTree(2)
    with pytest.raises(ValueError):
        tree.insert([1, 2, 3, 4], [0])
    assert tree.num_cached_blocks == 0


def test_split_keeps_a_locked_handle_ending_where_it_did():
    """A node split by a later insert or match leaves a held match valid and locked."""
    tree = _tree_with(1, ([1, 2, 3, 4], [0, 1, 2, 3]))
    match = tree.match_prefix([1, 2, 3, 4])
    tree.lock(match.node)
    tree.insert([1, 2, 9], [4, 5, 6])  # splits the 4-block node after block 2
    tree.match_prefix([1])  # and after block 1
    tree.check_integrity()
    assert tree.num_locked_blocks == 4 and tree.path_blocks(match.node) == [0, 1, 2, 3]
    assert sorted(tree.evict(10)) == [6]  # only the unlocked branch goes
    tree.unlock(match.node)
    assert tree.num_locked_blocks == 0 and tree.num_evictable_blocks == 4
    tree.check_integrity()


def test_lock_protects_the_whole_path_from_eviction():
    """Locked blocks (the node and its ancestors) are never evicted; unlock releases them."""
    tree = _tree_with(1, ([1, 2, 3], [0, 1, 2]), ([1, 2, 4], [0, 1, 3]), ([5], [4]))
    match = tree.match_prefix([1, 2, 3])
    tree.lock(match.node)
    assert (tree.num_locked_blocks, tree.num_evictable_blocks) == (3, 2)
    assert sorted(tree.evict(10)) == [3, 4]
    assert tree.evict(1) == [] and tree.num_cached_blocks == 3
    tree.unlock(match.node)
    assert tree.evict(10) == [2, 0, 1]  # the leaf first, then the parent it left childless
    assert tree.num_cached_blocks == 0
    tree.check_integrity()


def test_evict_takes_least_recently_used_leaves_first():
    """Leaves go in LRU order, where a match touches its whole path."""
    tree = _tree_with(1, ([1], [10]), ([2], [20]), ([3], [30]))
    tree.match_prefix([1])
    assert tree.evict(1) == [20]
    tree.match_prefix([3, 3])
    assert tree.evict(1) == [10]
    assert tree.evict(5) == [30]
    tree.check_integrity()


def test_evict_cascades_from_leaves_to_their_parents():
    """A parent is evicted only after all its children, then the next in LRU order."""
    tree = _tree_with(2, ([0, 0, 1, 1], [1, 2]), ([0, 0, 2, 2], [1, 3]))
    assert sorted(tree.evict(2)) == [2, 3]
    assert tree.num_cached_blocks == 1 and tree.match_prefix([0, 0, 1, 1]).blocks == [1]
    assert tree.evict(2) == [1]
    tree.check_integrity()


def test_evict_of_part_of_a_long_leaf_takes_its_tail():
    """Evicting fewer blocks than a leaf holds keeps its leading blocks cached."""
    tree = _tree_with(2, (list(range(8)), [4, 5, 6, 7]))
    assert tree.evict(1) == [7]
    assert tree.match_prefix(list(range(8))).blocks == [4, 5, 6]
    assert tree.evict(0) == [] and tree.num_cached_blocks == 3
    tree.check_integrity()


def test_namespaces_never_share_blocks():
    """The same tokens in another namespace neither match nor count as already present."""
    tree = RadixTree(2)
    tree.insert([1, 2, 3, 4], [0, 1], namespace="a")
    assert tree.match_prefix([1, 2, 3, 4]).blocks == []
    assert tree.match_prefix([1, 2, 3, 4], namespace="b").blocks == []
    assert tree.match_prefix([1, 2, 3, 4], namespace="a").blocks == [0, 1]
    assert tree.insert([1, 2, 3, 4], [2, 3], namespace="b") == 0
    assert tree.match_prefix([1, 2], namespace="b").blocks == [2]
    tree.check_integrity()


def test_lock_of_an_evicted_match_and_unlock_without_lock_raise():
    tree = _tree_with(1, ([1, 2], [0, 1]))
    stale = tree.match_prefix([1, 2])
    with pytest.raises(ValueError):
        tree.unlock(stale.node)
    tree.evict(2)
    with pytest.raises(ValueError):
        tree.lock(stale.node)
    empty = tree.match_prefix([5])
    tree.lock(empty.node)  # the empty match: nothing to hold
    tree.unlock(empty.node)
    tree.check_integrity()


def test_stats_count_cached_locked_evictable_and_hit_tokens():
    tree = _tree_with(2, ([1, 2, 3, 4, 5], [0, 1, 2]))
    match = tree.match_prefix([1, 2, 3, 9])
    tree.lock(match.node)
    assert (tree.num_cached_blocks, tree.num_locked_blocks, tree.num_evictable_blocks) == (2, 1, 1)
    assert (tree.hit_tokens, tree.query_tokens) == (2, 4)
    assert match.num_query_tokens == 4


def test_check_integrity_reports_a_wrong_counter():
    tree = _tree_with(1, ([1, 2], [0, 1]))
    tree.num_cached_blocks += 1
    with pytest.raises(AssertionError, match="cached"):
        tree.check_integrity()


def test_cached_tokens_counts_the_match_without_touching_the_tree():
    """The router scores workers with cached_tokens: no LRU touch, no split, no hit counted."""
    tree = RadixTree(block_size=2)
    tree.insert([1, 2, 3, 4, 5, 6], [10, 11, 12])
    tree.insert([7, 8], [13])  # more recent than [1..6]
    hit_tokens, query_tokens = tree.hit_tokens, tree.query_tokens
    assert tree.cached_tokens([1, 2, 3, 4, 9, 9, 9]) == 4  # ends inside the first leaf
    assert tree.cached_tokens([1, 2, 3, 4, 5, 6], namespace="other") == 0
    assert (tree.hit_tokens, tree.query_tokens) == (hit_tokens, query_tokens)
    tree.check_integrity()
    # [1..6] is still the least recently used leaf, and whole: one eviction takes all three
    assert sorted(tree.evict(3)) == [10, 11, 12]
    assert tree.match_prefix([1, 2, 3, 4]).num_tokens == 0
    assert tree.match_prefix([7, 8]).blocks == [13]

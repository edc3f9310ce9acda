"""Unit tests of the KV cache manager: a request's life, release with and without caching,
duplicates, eviction on allocate, running requests shared, stats, and the integrity check."""

from __future__ import annotations

import subprocess
import sys

import pytest

from yaie.kernels.cache import CacheStats, KVCacheManager, OutOfBlocksError


def cache_admit(cache: KVCacheManager, tokens: list[int], namespace: str = ""):
    """match, lock and allocate the rest, as the scheduler does; returns (match, blocks)."""
    match = cache.match_prefix(tokens, namespace)
    need = -(-len(tokens) // cache.block_size) - len(match.blocks)
    assert cache.can_allocate(need, match)
    cache.lock(match)
    blocks = match.blocks + cache.allocate(need)
    cache.check_integrity()
    return match, blocks


def _counts(cache: KVCacheManager) -> tuple[int, int, int]:
    s = cache.stats()
    return s.free_blocks, s.used_blocks, s.cached_blocks


def test_modules_import_without_torch():
    """The scheduler imports the radix tree, block manager, cache manager and the sampling
    parameters without torch."""
    code = (
        "import sys; import yaie.kernels.cache, yaie.kernels.cache.radix_tree, "
        "yaie.kernels.cache.block_manager, yaie.kernels.cache.kv_cache, "
        "yaie.kernels.sampling, yaie.kernels.sampling.config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_release_with_cache_keeps_full_blocks_and_frees_the_tail():
    """A finished request's full blocks become cached (evictable); its partial block is freed."""
    cache = KVCacheManager(num_blocks=8, block_size=4)
    prompt = list(range(10))
    match, blocks = cache_admit(cache, prompt)
    assert match.blocks == [] and len(blocks) == 3 and _counts(cache) == (5, 3, 0)
    cache.release(prompt, blocks, match)
    cache.check_integrity()
    assert _counts(cache) == (6, 0, 2)
    again, blocks2 = cache_admit(cache, prompt + [99])
    assert again.blocks == blocks[:2] and again.num_tokens == 8 and blocks2[:2] == blocks[:2]
    assert _counts(cache) == (5, 3, 0)  # two locked + one new private block


def test_release_without_cache_frees_private_blocks_and_unlocks_the_match():
    cache = KVCacheManager(num_blocks=8, block_size=2)
    first, blocks = cache_admit(cache, [1, 2, 3, 4])
    cache.release([1, 2, 3, 4], blocks, first)
    match, blocks = cache_admit(cache, [1, 2, 3, 4, 5, 6, 7])
    assert len(match.blocks) == 2 and _counts(cache) == (4, 4, 0)
    cache.release([1, 2, 3, 4, 5, 6, 7], blocks, match, cache=False)  # aborted
    cache.check_integrity()
    assert _counts(cache) == (6, 0, 2)
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 7]).num_tokens == 4


def test_concurrent_duplicates_are_freed_and_the_first_copy_kept():
    """Two requests that computed the same blocks: the tree keeps one copy, frees the other."""
    cache = KVCacheManager(num_blocks=8, block_size=2)
    prompt = [1, 2, 3, 4, 5]
    (m1, b1), (m2, b2) = cache_admit(cache, prompt), cache_admit(cache, prompt)
    assert _counts(cache) == (2, 6, 0)
    cache.release(prompt, b1, m1)
    cache.release(prompt, b2, m2)
    cache.check_integrity()
    assert _counts(cache) == (6, 0, 2)
    assert cache.match_prefix(prompt).blocks == b1[:2]
    assert all(cache.blocks.ref_count(b) == 0 for b in b2)


def test_allocate_evicts_only_what_it_needs_in_lru_order():
    cache = KVCacheManager(num_blocks=4, block_size=1)
    for prompt in ([1], [2], [3]):
        match, blocks = cache_admit(cache, prompt)
        cache.release(prompt, blocks, match)
    cache.match_prefix([1])  # the most recently used now
    assert _counts(cache) == (1, 0, 3)
    cache.allocate(2)  # one free + one evicted: the cache of [2]
    cache.check_integrity()
    assert _counts(cache) == (0, 2, 2)
    assert [cache.match_prefix([t]).num_tokens for t in (1, 2, 3)] == [1, 0, 1]


def test_locked_blocks_are_never_evicted_and_a_short_pool_raises():
    cache = KVCacheManager(num_blocks=4, block_size=1)
    first, blocks = cache_admit(cache, [1, 2, 3])
    cache.release([1, 2, 3], blocks, first)
    match = cache.match_prefix([1, 2, 3])
    assert not cache.can_allocate(2, match) and cache.can_allocate(2)  # locking pins 3 blocks
    cache.lock(match)
    with pytest.raises(OutOfBlocksError):
        cache.allocate(2)
    cache.check_integrity()
    assert _counts(cache) == (1, 3, 0) and cache.allocate(1) != []


def test_cache_running_shares_blocks_and_keeps_the_block_table():
    """A running request's full blocks can be matched at once; its own table stays valid."""
    cache = KVCacheManager(num_blocks=12, block_size=2)
    tokens = [1, 2, 3, 4, 5]
    m1, b1 = cache_admit(cache, tokens)
    m2, b2 = cache_admit(cache, tokens)  # computed the same blocks meanwhile
    m1 = cache.cache_running(tokens, b1, m1)
    assert m1.blocks == b1[:2] and cache.stats().locked_blocks == 2
    m2 = cache.cache_running(tokens, b2, m2)  # duplicates stay private: b2 is unchanged
    assert m2.blocks == b1[:2] and cache.match_prefix(tokens).blocks == b1[:2]
    cache.check_integrity()
    m3, b3 = cache_admit(cache, tokens + [6])
    assert b3[:2] == b1[:2] and _counts(cache) == (12 - 3 - 3 - 1, 7, 0)
    for match, blocks, toks in ((m1, b1, tokens), (m2, b2, tokens), (m3, b3, tokens + [6])):
        cache.release(toks, blocks, match)
        cache.check_integrity()
    assert _counts(cache) == (9, 0, 3)  # [1 2][3 4] and [5 6] cached


def test_release_refuses_inconsistent_arguments():
    """Tokens off the matched prefix, another namespace, or foreign blocks raise ValueError."""
    cache = KVCacheManager(num_blocks=8, block_size=2)
    first, blocks = cache_admit(cache, [1, 2, 3, 4], namespace="a")
    cache.release([1, 2, 3, 4], blocks, first, namespace="a")
    match, blocks = cache_admit(cache, [1, 2, 3, 4, 5], namespace="a")
    with pytest.raises(ValueError):
        cache.release([1, 2, 9, 9, 5], blocks, match, namespace="a")
    with pytest.raises(ValueError):
        cache.release([1, 2, 3, 4, 5], blocks, match, namespace="b")
    with pytest.raises(ValueError):
        cache.release([1, 2, 3, 4, 5], blocks + [7], match, namespace="a")
    with pytest.raises(ValueError):
        cache.free(blocks[:1])  # a cached block is not the request's to free
    cache.check_integrity()
    cache.release([1, 2, 3, 4, 5], blocks, match, namespace="a")
    assert _counts(cache) == (6, 0, 2)


def test_release_of_an_unlocked_match_raises_and_changes_nothing():
    """release needs the request's locked match (so a second release is refused up front)."""
    cache = KVCacheManager(num_blocks=8, block_size=2)
    first, blocks = cache_admit(cache, [1, 2, 3, 4])
    cache.release([1, 2, 3, 4], blocks, first)
    loose = cache.match_prefix([1, 2, 3, 4, 5])  # never locked
    blocks = loose.blocks + cache.allocate(1)
    with pytest.raises(ValueError):
        cache.release([1, 2, 3, 4, 5], blocks, loose)
    cache.check_integrity()
    assert _counts(cache) == (5, 1, 2)


def test_stats_report_hits_over_admissions():
    cache = KVCacheManager(num_blocks=8, block_size=2)
    m, b = cache_admit(cache, [1, 2, 3, 4])
    cache.release([1, 2, 3, 4], b, m)
    cache.match_prefix([1, 2, 3, 4])  # a look without admission does not count
    cache_admit(cache, [1, 2, 3, 4, 5, 6])
    stats = cache.stats()
    assert stats == CacheStats(8, 5, 3, 0, 2, hit_tokens=4, query_tokens=10)
    assert stats.hit_rate == pytest.approx(0.4)


def test_check_integrity_detects_a_leaked_block():
    cache = KVCacheManager(num_blocks=4, block_size=1)
    blocks = cache.allocate(2)
    cache.free(blocks[:1])
    cache._private.discard(blocks[1])  # the manager forgot a block it handed out
    with pytest.raises(AssertionError):
        cache.check_integrity()

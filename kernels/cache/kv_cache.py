"""KV cache manager of one worker pool: a BlockManager and a RadixTree kept consistent.

Every block is exactly one of: free, private to a live request, or cached in the tree (locked
by live requests or evictable). Pure Python: the scheduler uses it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from yaie.kernels.cache.block_manager import BlockManager, OutOfBlocksError
from yaie.kernels.cache.radix_tree import PrefixMatch, RadixTree

__all__ = ["CacheStats", "KVCacheManager", "OutOfBlocksError", "PrefixMatch"]


@dataclass(frozen=True)
class CacheStats:
    """A snapshot; free_blocks + used_blocks + cached_blocks == total_blocks."""

    total_blocks: int
    free_blocks: int
    used_blocks: int  # held by live requests: their private blocks + locked tree blocks
    cached_blocks: int  # in the tree and unreferenced: evictable
    locked_blocks: int  # the tree part of used_blocks
    hit_tokens: int  # over lock() calls (admissions): matched tokens
    query_tokens: int  # ... and the tokens asked for

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class KVCacheManager:
    """Blocks for the requests of one worker pool, sharing cached prefixes.

    A request's life: m = match_prefix(prompt); if can_allocate(n, m): lock(m), then
    blocks = m.blocks + allocate(n) (lock before allocate: allocating may evict unlocked
    blocks); allocate more as it grows; at its end release(tokens, blocks, m).
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks = BlockManager(num_blocks)
        self.tree = RadixTree(block_size)
        self._private: set[int] = set()  # allocated to live requests, not in the tree
        self._hit_tokens = 0
        self._query_tokens = 0

    def match_prefix(self, tokens: Sequence[int], namespace: str = "") -> PrefixMatch:
        """The longest cached prefix of tokens in namespace (whole blocks); takes no lock."""
        return self.tree.match_prefix(tokens, namespace)

    def cached_tokens(self, tokens: Sequence[int], namespace: str = "") -> int:
        """match_prefix(tokens).num_tokens without touching the cache (no LRU, split or stats)."""
        return self.tree.cached_tokens(tokens, namespace)

    def lock(self, match: PrefixMatch) -> None:
        """Hold match's blocks for a request (counted as an admission in the hit rate)."""
        self.tree.lock(match.node)
        self._hit_tokens += match.num_tokens
        self._query_tokens += match.num_query_tokens

    def unlock(self, match: PrefixMatch) -> None:
        """Undo lock(match) (release() does this itself)."""
        self.tree.unlock(match.node)

    def can_allocate(self, n: int, match: PrefixMatch | None = None) -> bool:
        """Whether allocate(n) can succeed: free + evictable >= n; with match, as if match
        were locked first (its unlocked blocks then no longer count as evictable)."""
        pinned = self.tree.num_unlocked_blocks(match.node) if match is not None else 0
        return 0 <= n <= self.blocks.num_free_blocks + self.tree.num_evictable_blocks - pinned

    def allocate(self, n: int) -> list[int]:
        """n private blocks for a request, evicting least recently used cached blocks when the
        free list is short; raises OutOfBlocksError (changing nothing) if impossible."""
        if not self.can_allocate(n):
            raise OutOfBlocksError(
                f"asked for {n} blocks: {self.blocks.num_free_blocks} free, "
                f"{self.tree.num_evictable_blocks} evictable"
            )
        self.evict(n - self.blocks.num_free_blocks)
        blocks = self.blocks.allocate(n)
        self._private.update(blocks)
        return blocks

    def free(self, blocks: Sequence[int]) -> None:
        """Return private blocks (from allocate, not in the tree) to the free list."""
        stray = [b for b in blocks if b not in self._private]
        if stray or len(set(blocks)) != len(blocks):
            raise ValueError(f"not private blocks of a live request (or repeated): {stray[:8]}")
        self.blocks.free(blocks)
        self._private.difference_update(blocks)

    def evict(self, num_blocks: int) -> int:
        """Free up to num_blocks unlocked cached blocks (LRU first); returns how many."""
        freed = self.tree.evict(num_blocks) if num_blocks > 0 else []
        self.blocks.free(freed)
        return len(freed)

    def release(
        self,
        tokens: Sequence[int],
        blocks: Sequence[int],
        match: PrefixMatch,
        namespace: str = "",
        cache: bool = True,
    ) -> None:
        """End of a request (finished, aborted or preempted): unlock match, free its blocks.

        tokens: those whose K/V is written in blocks, in order (at least match's tokens);
        blocks[i] holds tokens[i*bs:(i+1)*bs], blocks[:len(match.blocks)] being match's. With
        cache=True the full blocks go into the tree first; those it already held are freed like
        the partial tail block and any unused blocks. With cache=False every private block is freed.
        Freed blocks may be reallocated at once: call this only when no plan in flight uses them.
        """
        self._check_request(blocks, match)
        tree_blocks = (
            self._insert(tokens, blocks, match, namespace).blocks if cache else match.blocks
        )
        self.free(_private_blocks(blocks, tree_blocks))
        self.tree.unlock(match.node)

    def cache_running(
        self, tokens: Sequence[int], blocks: Sequence[int], match: PrefixMatch, namespace: str = ""
    ) -> PrefixMatch:
        """Share a running request's full blocks now; returns the match it holds from now on
        (locked; the old one is unlocked). Pass it to later calls and to release().

        The request's block table does not change: where the tree already held a block, the
        request keeps its own copy (private, freed at release) and the tree keeps its id.
        """
        self._check_request(blocks, match)
        new_match = self._insert(tokens, blocks, match, namespace)
        self.tree.lock(new_match.node)
        self.tree.unlock(match.node)
        return new_match

    def stats(self) -> CacheStats:
        """Block counts by state, and the hit rate over admissions."""
        locked = self.tree.num_locked_blocks
        return CacheStats(
            total_blocks=self.num_blocks,
            free_blocks=self.blocks.num_free_blocks,
            used_blocks=len(self._private) + locked,
            cached_blocks=self.tree.num_evictable_blocks,
            locked_blocks=locked,
            hit_tokens=self._hit_tokens,
            query_tokens=self._query_tokens,
        )

    def check_integrity(self) -> None:
        """O(num_blocks): tree consistent; free, private and cached blocks partition the pool
        (each private or cached block has exactly one reference, free ones none); counts add up.
        Raises AssertionError with what is wrong."""
        cached = self.tree.check_integrity()
        both = self._private.intersection(cached)
        assert not both, f"blocks both private and cached: {sorted(both)[:8]}"
        holders = dict.fromkeys(self._private, 1)
        holders.update(dict.fromkeys(cached, 1))
        self.blocks.check_integrity(holders)
        s = self.stats()
        total = s.free_blocks + s.used_blocks + s.cached_blocks
        assert total == s.total_blocks, f"free + used + cached = {total} != {s.total_blocks}"

    def _check_request(self, blocks: Sequence[int], match: PrefixMatch) -> None:
        if not self.tree.is_locked(match.node):
            raise ValueError("the request's match is not locked (or was already released)")
        if len(set(blocks)) != len(blocks):
            raise ValueError("a block id appears twice in a request's blocks")
        if self._private.issuperset(_private_blocks(blocks, match.blocks)):
            return
        for i, block in enumerate(blocks):
            if not _is_tree_block(i, block, match.blocks) and block not in self._private:
                raise ValueError(f"block {block} (position {i}) is neither matched nor allocated")

    def _insert(
        self, tokens: Sequence[int], blocks: Sequence[int], match: PrefixMatch, namespace: str
    ) -> PrefixMatch:
        """Insert the full blocks of tokens; the blocks the tree takes stop being private."""
        if not self.tree.holds_prefix(match.node, tokens, namespace):
            raise ValueError("tokens (in namespace) do not start with the matched prefix")
        new_match, present = self.tree.insert_and_match(tokens, blocks, namespace)
        self._private.difference_update(blocks[present : len(new_match.blocks)])
        return new_match


def _private_blocks(blocks: Sequence[int], tree_blocks: Sequence[int]) -> list[int]:
    """The request's blocks that are not the tree's (see _is_tree_block), in order."""
    n = len(tree_blocks)
    if list(blocks[:n]) == list(tree_blocks):  # (the common case: compared in C)
        return list(blocks[n:])
    return [b for i, b in enumerate(blocks) if not _is_tree_block(i, b, tree_blocks)]


def _is_tree_block(position: int, block: int, tree_blocks: Sequence[int]) -> bool:
    """Whether a request's block at position is the tree's (shared), not its private copy."""
    return position < len(tree_blocks) and tree_blocks[position] == block

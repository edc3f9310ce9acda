"""A fixed pool of KV blocks: a free list and a reference count per block. Pure Python."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence


class OutOfBlocksError(RuntimeError):
    """allocate() asked for more blocks than the pool can give."""


class BlockManager:
    """Hands out block ids 0..num_blocks-1. A block is free (reference count 0, on the free list)
    or in use (count >= 1, off it); free() drops one reference and returns a block to the free
    list when its count reaches 0. Freed blocks are reused last (FIFO)."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def ref_count(self, block: int) -> int:
        """How many holders block has (0: free)."""
        self._check_id(block)
        return self._ref_counts[block]

    def can_allocate(self, n: int) -> bool:
        """Whether allocate(n) would succeed."""
        return 0 <= n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """Take n free blocks, each with one reference; raises OutOfBlocksError (taking nothing)
        when fewer than n are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > len(self._free):
            raise OutOfBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        for block in blocks:
            self._ref_counts[block] = 1
        return blocks

    def add_ref(self, blocks: Sequence[int]) -> None:
        """One more holder for each of blocks, which must be in use."""
        for block in blocks:
            self._check_id(block)
            if self._ref_counts[block] == 0:
                raise ValueError(f"block {block} is free: allocate it before sharing it")
        for block in blocks:
            self._ref_counts[block] += 1

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference per occurrence in blocks; all-or-nothing: a free of a free block
        (or more times than it has references) raises ValueError and changes nothing."""
        for block, times in Counter(blocks).items():
            self._check_id(block)
            if self._ref_counts[block] < times:
                refs = self._ref_counts[block]
                raise ValueError(f"block {block} freed {times} time(s) but has {refs} reference(s)")
        for block in blocks:
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free.append(block)

    def check_integrity(self, expected_refs: Mapping[int, int] | None = None) -> None:
        """O(num_blocks). Free list: no duplicates, exactly the blocks with count 0; with
        expected_refs (block -> count, absent means 0), every count equals it. Raises
        AssertionError naming the bad blocks."""
        free = set(self._free)
        assert len(free) == len(self._free), "a block is on the free list twice"
        unheld = {block for block, refs in enumerate(self._ref_counts) if refs == 0}
        assert free == unheld, (
            f"free but referenced: {sorted(free - unheld)[:8]}; "
            f"unreferenced but not free: {sorted(unheld - free)[:8]}"
        )
        if expected_refs is None:
            assert min(self._ref_counts) >= 0, "a negative reference count"
            return
        want = [0] * self.num_blocks
        for block, refs in expected_refs.items():
            assert 0 <= block < self.num_blocks, f"holders name block {block}, outside the pool"
            want[block] = refs
        if want != self._ref_counts:
            bad = [b for b, refs in enumerate(self._ref_counts) if refs != want[b]]
            raise AssertionError(f"reference counts differ from the holders' at blocks {bad[:8]}")

    def _check_id(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block id {block} outside the pool of {self.num_blocks}")

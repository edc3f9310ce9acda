"""Unit tests of the block manager: allocation, reference counts, errors, integrity check."""

from __future__ import annotations

import pytest

from yaie.kernels.cache import BlockManager, OutOfBlocksError


def test_allocate_and_free_move_blocks_between_free_and_used():
    """Allocated blocks are distinct with one reference; freeing returns them (FIFO reuse)."""
    manager = BlockManager(4)
    blocks = manager.allocate(3)
    assert sorted(blocks) == [0, 1, 2] and manager.num_free_blocks == 1
    assert [manager.ref_count(b) for b in range(4)] == [1, 1, 1, 0]
    manager.check_integrity(dict.fromkeys(blocks, 1))
    manager.free([blocks[1]])
    assert manager.num_free_blocks == 2 and manager.num_used_blocks == 2
    assert manager.allocate(2) == [3, blocks[1]]  # the longest-free block first
    manager.check_integrity()


def test_allocate_beyond_the_pool_raises_and_takes_nothing():
    manager = BlockManager(3)
    assert manager.can_allocate(3) and not manager.can_allocate(4) and manager.can_allocate(0)
    with pytest.raises(OutOfBlocksError):
        manager.allocate(4)
    assert manager.num_free_blocks == 3 and manager.allocate(0) == []
    with pytest.raises(ValueError):
        manager.allocate(-1)
    manager.check_integrity({})


def test_shared_block_is_free_only_after_its_last_reference():
    manager = BlockManager(2)
    (block,) = manager.allocate(1)
    manager.add_ref([block])
    assert manager.ref_count(block) == 2
    manager.check_integrity({block: 2})
    manager.free([block])
    assert manager.num_free_blocks == 1
    manager.free([block])
    assert manager.num_free_blocks == 2 and manager.ref_count(block) == 0


def test_double_free_raises_and_changes_nothing():
    """A free of a free block (or twice in one call) is refused atomically."""
    manager = BlockManager(3)
    a, b = manager.allocate(2)
    with pytest.raises(ValueError):
        manager.free([a, b, b])
    assert manager.ref_count(a) == 1 and manager.ref_count(b) == 1
    manager.free([a])
    with pytest.raises(ValueError):
        manager.free([a])
    with pytest.raises(ValueError):
        manager.add_ref([a])  # sharing a free block
    with pytest.raises(ValueError):
        manager.free([3])  # outside the pool
    manager.check_integrity({b: 1})


def test_check_integrity_detects_corruption():
    """Free-but-referenced, a duplicate on the free list and wrong counts are reported."""
    manager = BlockManager(3)
    blocks = manager.allocate(1)
    with pytest.raises(AssertionError, match="reference counts differ"):
        manager.check_integrity({})  # a leak: nobody claims the block
    with pytest.raises(AssertionError, match="outside the pool"):
        manager.check_integrity({5: 1, blocks[0]: 1})
    manager._free.append(manager._free[0])
    with pytest.raises(AssertionError, match="twice"):
        manager.check_integrity()
    manager._free.pop()
    manager._ref_counts[manager._free[0]] = 1
    with pytest.raises(AssertionError, match="free but referenced"):
        manager.check_integrity()


def test_pool_must_hold_a_block():
    with pytest.raises(ValueError):
        BlockManager(0)

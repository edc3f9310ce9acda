"""The KV cache's bookkeeping, pure Python (the scheduler imports it without torch): a radix tree
from token prefixes to block ids, a block allocator, and the manager that keeps the two consistent
for one worker pool."""

from yaie.kernels.cache.block_manager import BlockManager, OutOfBlocksError
from yaie.kernels.cache.kv_cache import CacheStats, KVCacheManager
from yaie.kernels.cache.radix_tree import PrefixMatch, RadixTree

__all__ = [
    "BlockManager",
    "CacheStats",
    "KVCacheManager",
    "OutOfBlocksError",
    "PrefixMatch",
    "RadixTree",
]

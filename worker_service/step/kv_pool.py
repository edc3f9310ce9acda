"""The paged KV pool: one tensor [layers, 2 (K, V), num_blocks + 1, block_size, kv_heads, head_dim]
in the KV dtype (the model's, or fp8 e4m3 with a float32 scale per slot and KV head beside it:
scales [layers, 2, num_blocks + 1, kv_heads, block_size]).

Sized from an explicit block count, or from a fraction of the device's free memory after the
weights are loaded (CUDA), or from a memory budget (CPU). The extra last block is scratch space
that padded rows of a CUDA-graph batch write into; it is never handed to the scheduler.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from yaie.kernels.attention import FP8_DTYPE
from yaie.worker_service.config import KVPoolConfig

if TYPE_CHECKING:
    from yaie.worker_service.tp import TPGroup

log = logging.getLogger(__name__)


def bytes_per_block(
    num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """K and V of every layer for block_size tokens (fp8: their float32 scales included)."""
    element_size = torch.empty((), dtype=dtype).element_size()
    scale_size = 4 if dtype == FP8_DTYPE else 0
    return num_layers * 2 * block_size * num_kv_heads * (head_dim * element_size + scale_size)


class KVPool:
    """Owns the pool tensor; block ids [0, num_blocks) belong to the scheduler."""

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        block_size: int,
        num_blocks: int,
    ) -> None:
        assert num_blocks > 0 and block_size > 0
        self.block_size = block_size
        self.num_blocks = num_blocks
        # [L, 2, N + 1, block_size, kv_heads, head_dim]; block N is the scratch block.
        shape = (num_layers, 2, num_blocks + 1)
        self.cache = torch.zeros(
            *shape, block_size, num_kv_heads, head_dim, dtype=dtype, device=device
        )
        # [L, 2, N + 1, kv_heads, block_size] float32 for an fp8 pool; None otherwise.
        self.scales = None
        if dtype == FP8_DTYPE:
            self.scales = torch.ones(
                *shape, num_kv_heads, block_size, dtype=torch.float32, device=device
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.cache.dtype

    @property
    def scratch_block(self) -> int:
        """A block nobody owns: padded (fake) rows of a batch write their K/V here."""
        return self.num_blocks

    @classmethod
    def allocate(
        cls,
        config: KVPoolConfig,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        tp: TPGroup | None = None,
    ) -> KVPool:
        """Sizes the pool per config (call after the weights are on the device) and allocates it.
        With tp (num_kv_heads is this rank's share) every rank takes the smallest count of any
        rank, so one block id means the same block on every rank."""
        per_block = bytes_per_block(num_layers, num_kv_heads, head_dim, config.block_size, dtype)
        if config.num_blocks is not None:
            num_blocks = config.num_blocks
        elif device.type == "cuda":
            free_bytes, _ = torch.cuda.mem_get_info(device)
            num_blocks = int(free_bytes * config.memory_fraction) // per_block - 1
        else:
            num_blocks = config.cpu_memory_bytes // per_block - 1
        if tp is not None:
            num_blocks = tp.min_over_ranks(num_blocks)
        if num_blocks <= 0:
            raise ValueError(
                f"no memory for even one KV block of {per_block} bytes; "
                "pass --num-blocks or a larger --memory-fraction"
            )
        log.info(
            "KV pool: %d blocks of %d tokens (%.1f MiB, %s) on %s",
            num_blocks,
            config.block_size,
            (num_blocks + 1) * per_block / 2**20,
            str(dtype).removeprefix("torch."),
            device,
        )
        return cls(num_layers, num_kv_heads, head_dim, dtype, device, config.block_size, num_blocks)

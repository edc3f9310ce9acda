"""Random paged-attention inputs for tests and benchmarks: a ragged batch stored in a shuffled pool.

Unused pool blocks and unused block-table entries point at NaN, so a kernel that reads past a
request's tokens poisons its output instead of passing by luck.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from yaie.kernels.attention.reference import quantize_fp8_pool, store_kv_reference


@dataclass
class PagedBatch:
    q: torch.Tensor  # [num_tokens, q_heads, head_dim]; request b's rows query_start[b]:[b+1]
    k_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [batch, max_blocks] int32
    seq_lens: torch.Tensor  # [batch] int32
    query_start: torch.Tensor  # [batch + 1] int32
    max_query_len: int
    keys: list[torch.Tensor]  # per request [seq_len, kv_heads, head_dim], as stored in the pool
    values: list[torch.Tensor]
    scale: float
    k_scale: torch.Tensor | None = None  # [num_blocks, kv_heads, block_size] for an fp8 pool
    v_scale: torch.Tensor | None = None

    def scales(self) -> dict[str, torch.Tensor | None]:
        """The k_scale / v_scale keyword arguments of every attention operation."""
        return {"k_scale": self.k_scale, "v_scale": self.v_scale}

    def to_fp8(self) -> PagedBatch:
        """The same batch over an fp8 pool: every slot quantized as store_kv would (NaN slots
        stay NaN); keys and values keep the unquantized K/V."""
        k_cache, k_scale = quantize_fp8_pool(self.k_cache)
        v_cache, v_scale = quantize_fp8_pool(self.v_cache)
        return replace(self, k_cache=k_cache, v_cache=v_cache, k_scale=k_scale, v_scale=v_scale)

    def extend_args(self) -> tuple:
        """Positional arguments of extend_attention (backend left to the caller)."""
        return (
            self.q,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.seq_lens,
            self.query_start,
            self.max_query_len,
            self.scale,
        )

    def decode_args(self) -> tuple:
        """Positional arguments of decode_attention (one new token per request)."""
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.seq_lens, self.scale)

    def upcast(self) -> PagedBatch:
        """The same inputs in float32, for the reference of a bf16 run."""
        return replace(
            self, q=self.q.float(), k_cache=self.k_cache.float(), v_cache=self.v_cache.float()
        )


def random_ragged_lengths(
    seed: int, batch: int, max_prefix: int, max_new: int
) -> tuple[list[int], list[int]]:
    """Cached-prefix and new-token counts, shuffled; they include the edge cases 0 and 1."""
    rng = random.Random(seed)
    prefix = [0] + [rng.randint(0, max_prefix) for _ in range(batch - 1)]
    new = [1] + [rng.randint(1, max_new) for _ in range(batch - 1)]
    rng.shuffle(prefix)
    rng.shuffle(new)
    return prefix, new


def make_paged_batch(
    prefix_lens: list[int],
    new_lens: list[int],
    block_size: int,
    kv_heads: int,
    q_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    spare_blocks: int = 2,
) -> PagedBatch:
    """Request b has prefix_lens[b] cached tokens and new_lens[b] new ones, all K/V in the pool."""
    generator = torch.Generator().manual_seed(seed)
    data_generator = torch.Generator(device).manual_seed(seed)
    seq_lens = [p + n for p, n in zip(prefix_lens, new_lens, strict=True)]
    blocks_needed = [-(-s // block_size) for s in seq_lens]
    max_blocks = max([1, *blocks_needed])
    # Block 0 is a NaN block: table padding points there; spare blocks are NaN too.
    num_blocks = 1 + sum(blocks_needed) + spare_blocks
    order = torch.randperm(num_blocks - 1, generator=generator) + 1
    table = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    used = 0
    for b, count in enumerate(blocks_needed):
        table[b, :count] = order[used : used + count].int()
        used += count

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=data_generator, device=device).to(dtype)

    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    keys = [rand(s, kv_heads, head_dim) for s in seq_lens]
    values = [rand(s, kv_heads, head_dim) for s in seq_lens]
    table = table.to(device)
    for b, seq_len in enumerate(seq_lens):
        pos = torch.arange(seq_len, device=device)
        slots = table[b, pos // block_size].long() * block_size + pos % block_size
        store_kv_reference(k_cache, v_cache, keys[b], values[b], slots)
    starts = torch.tensor([0, *new_lens], device=device).cumsum(0).int()
    return PagedBatch(
        q=rand(int(starts[-1]), q_heads, head_dim),
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=table,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start=starts,
        max_query_len=max([0, *new_lens]),
        keys=keys,
        values=values,
        scale=head_dim**-0.5,
    )


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere in out gives inf."""
    out, ref = out.double().cpu(), ref.double().cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))

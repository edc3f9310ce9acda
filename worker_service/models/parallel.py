"""Megatron-style tensor-parallel pieces of the decoder: which slice of each checkpoint weight a
rank holds, the row-parallel linear layer (partial sums, then an all-reduce) and the
vocab-parallel logits (each rank's slice of the vocabulary, then an all-gather).

Column-parallel layers (q/k/v, gate/up) are plain Linear layers holding a rank's rows; the
embeddings stay replicated. With tp None every piece is exactly the single-process layer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from yaie.kernels.linear import linear
from yaie.worker_service.models.config import ModelConfig

if TYPE_CHECKING:
    from yaie.worker_service.tp import TPGroup

_SHARDED_NAME = re.compile(
    r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.(weight|bias)$"
)
_ROW_PARALLEL = ("o_proj", "down_proj")  # sharded along their input dim (dim 1)


def check_tp_size(size: int, **dims: int) -> None:
    """ValueError unless every named dimension (num_attention_heads=32, ...) divides by size."""
    bad = [f"{name} ({value})" for name, value in dims.items() if value % size]
    if bad:
        raise ValueError(
            f"tensor parallelism {size} needs {', '.join(bad)} divisible by {size}: "
            f"each rank holds an equal share of the heads and MLP columns"
        )


def vocab_range(vocab_size: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's vocabulary rows: ceil(vocab / size) each, the last one shorter
    when size does not divide the vocabulary."""
    shard = -(-vocab_size // size)
    start = min(rank * shard, vocab_size)
    return start, min(start + shard, vocab_size)


def weight_slice(cfg: ModelConfig, name: str, rank: int, size: int) -> tuple[int, int, int] | None:
    """(dim, start, stop) of a Hugging Face weight that rank holds a slice of; None when every
    rank holds all of it (norms, embeddings, the biases added after an all-reduce)."""
    if name == "lm_head.weight" and not cfg.tie_word_embeddings:
        return (0, *vocab_range(cfg.vocab_size, rank, size))
    match = _SHARDED_NAME.search(name)
    if match is None:
        return None
    proj, kind = match.groups()
    if proj in _ROW_PARALLEL and kind == "bias":
        return None
    width = {
        "q_proj": cfg.num_heads * cfg.head_dim,
        "k_proj": cfg.num_kv_heads * cfg.head_dim,
        "v_proj": cfg.num_kv_heads * cfg.head_dim,
        "o_proj": cfg.num_heads * cfg.head_dim,
    }.get(proj, cfg.intermediate_size) // size
    return (1 if proj in _ROW_PARALLEL else 0), rank * width, (rank + 1) * width


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose forward takes yaie.kernels.linear's path: the
    skinny Triton kernel for a decode step's few rows on CUDA, F.linear otherwise."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, backend: str
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=dtype)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.backend)


class RowParallelLinear(Linear):
    """y = x W^T + b where x [T, in] and W [out, in] are split along `in` over the ranks: each rank
    multiplies its slice, the partial sums are all-reduced, then the (replicated) bias is added
    once. weight [out, in / size]; with tp None, exactly Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        dtype: torch.dtype,
        tp: TPGroup | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(in_features, out_features, bias, dtype, backend)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp is None:
            return super().forward(x)
        out = self.tp.all_reduce_(linear(x, self.weight, None, self.backend))
        return out if self.bias is None else out + self.bias


def vocab_parallel_logits(
    h: torch.Tensor, weight: torch.Tensor, vocab_size: int, tp: TPGroup
) -> torch.Tensor:
    """h [T, hidden] times rank's vocabulary rows weight [n, hidden] -> logits [T, vocab], equal
    bytes on every rank (all-gathered), so every rank samples the same tokens."""
    shard = -(-vocab_size // tp.size)
    local = F.linear(h, weight)  # [T, n], n == shard but on a short last rank
    if h.shape[0] == 0:  # same on every rank: no collective
        return local.new_empty(0, vocab_size)
    if local.shape[1] < shard:
        local = F.pad(local, (0, shard - local.shape[1]))
    return tp.all_gather(local)[:, :vocab_size]

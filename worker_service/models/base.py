"""CausalLM: the interface between the model runner and a model on the paged KV pool."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from yaie.worker_service.forward_batch import ForwardBatch


class CausalLM(nn.Module):
    """A decoder-only language model that reads and writes its K/V in the paged pool.

    kv_cache: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] in the KV dtype
    (the model's, another float dtype, or fp8 e4m3); layer i uses kv_cache[i, 0] as K and
    kv_cache[i, 1] as V. kv_scales: [num_layers, 2, num_blocks, num_kv_heads, block_size]
    float32 beside an fp8 kv_cache (kernels/attention's k_scale / v_scale), else None.
    """

    architecture: str
    vocab_size: int
    max_context: int  # longest sequence (prompt + output) the model serves exactly
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def forward(
        self,
        batch: ForwardBatch,
        kv_cache: torch.Tensor,
        kv_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stores the K/V of batch.input_ids at batch.slots, attends over each request's cached
        prefix plus its new tokens, and returns logits [len(batch.logits_indices), vocab] in the
        model's dtype (as transformers' lm_head gives them; the sampler reads any float dtype
        and works in fp32) for the rows batch.logits_indices only."""
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies (Hugging Face name, tensor) pairs into the parameters; ValueError naming the
        missing, unexpected or misshapen weights (tied lm_head excepted). Under tensor
        parallelism each tensor is already this rank's weight_slice of the checkpoint weight."""
        raise NotImplementedError

    def pack_cpu_linears(self) -> int:
        """Re-lays the loaded weights for a faster CPU matmul where the model can (see
        LlamaForCausalLM); returns how many layers changed."""
        return 0

    def weight_slice(self, name: str) -> tuple[int, int, int] | None:
        """(dim, start, stop) of checkpoint weight `name` this rank holds (tensor parallelism);
        None: all of it. The loader reads only that slice."""
        return None


def describe_names(names: Iterable[str], limit: int = 8) -> str:
    """'a, b, c (+N more)': a short listing for error messages."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")

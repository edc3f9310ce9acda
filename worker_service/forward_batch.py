"""The tensors one forward pass needs: the only meeting point of step plans and the model.

Built by the model runner from a step plan; read by the model's attention layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from yaie.kernels.attention import PrefixGroups


@dataclass
class ForwardBatch:
    """A ragged batch of new tokens over the paged KV pool (all tensors on the model's device).

    Request b runs its new tokens at rows query_start[b]:query_start[b+1] of input_ids; they are
    the last tokens of its seq_lens[b] tokens (cached prefix + new).
    """

    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64, position of each token in its sequence
    slots: torch.Tensor  # [num_tokens] int64, pool slot that receives each token's K/V
    block_tables: torch.Tensor  # [batch, max_blocks] int32
    seq_lens: torch.Tensor  # [batch] int32, cached + new tokens
    query_start: torch.Tensor  # [batch + 1] int32, cumulative new-token counts
    max_query_len: int  # max new tokens of one request (host int, known from the plan)
    is_decode: bool  # every request runs exactly one token
    logits_indices: torch.Tensor  # [num_sampled] int64, rows whose logits the sampler needs
    # A mixed batch (not is_decode) whose first num_single requests run one token each: those
    # rows take decode attention (one pass over each request's KV per kv head) and the rest
    # extend attention, with extend_query_start [batch - num_single + 1] = query_start[d:] - d.
    num_single: int = 0
    extend_query_start: torch.Tensor | None = None
    # Decode rows that share cached prefix blocks (worker_service/step/prefix_groups.py): every
    # row of a decode batch, or a mixed batch's num_single leading rows (kv_start [num_single]);
    # attention reads each shared prefix once per group. None: plain decode attention.
    prefix_groups: PrefixGroups | None = None
    # A decode batch without groups: its rows by seq_len, longest first ([batch] int32), the
    # order decode attention schedules them in (a ragged batch's programs then hold about
    # equal work). Any permutation of the rows gives the same result; None: the rows' order.
    decode_order: torch.Tensor | None = None
    # Set only while a prefill graph is captured (worker_service/step/prefill_graphs.py): each
    # layer hands it (q, attend) instead of attending, and carries on with what it returns.
    split_at_attention: Callable[[torch.Tensor, Callable], torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.seq_lens.shape[0]

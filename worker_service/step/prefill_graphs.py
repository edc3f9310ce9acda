"""Piecewise CUDA graphs of every step the decode graphs do not take: prefill, mixed, and decode
batches beyond their buckets (GPU only).

An eager forward launches ~15 kernels a layer from Python; on the H200 a 128-token prefill's
forward took 18.4 ms of host time for well under 1 ms of GPU work (benchmarks/NOTES.md). Here each
bucket of token counts is captured as num_layers + 1 graphs that split the forward at attention:
piece i runs layer i-1's o_proj, norms and MLP, then layer i's norm, QKV, rope and K/V store,
and copies q into a static buffer; attention runs eagerly between pieces (its grid depends on
the batch's requests, not on the bucket), reading that buffer and writing a static output that
the next piece reads. So any batch of up to the largest bucket's tokens replays, whatever mix of
requests it holds. The final norm and the logits run eagerly on the rows the sampler needs.

A batch of T tokens replays the smallest bucket >= T; its rows T.. are padding (token 0 at
position 0) whose K/V go to the pool's scratch block and whose rows no attention reads. Every
graph shares one memory pool and the pieces replay in capture order, so what one piece frees
another may reuse (vLLM's piecewise graphs work the same way).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from yaie.worker_service.forward_batch import ForwardBatch

if TYPE_CHECKING:
    from yaie.worker_service.step.kv_pool import KVPool

log = logging.getLogger(__name__)

# Above ~4k tokens a step's GPU time exceeds the eager host time (~10 ms on the H200), so the
# eager forward is no slower there and graphs would only add padding (benchmarks/NOTES.md).
DEFAULT_MAX_TOKENS = 4096


def prefill_graph_sizes(max_tokens: int) -> list[int]:
    """Token buckets: every multiple of 16 up to 128, then steps of an eighth of the size
    rounded down to 16 (a batch pads by under 12.5%), up to max_tokens rounded up to 16."""
    top = -(-max_tokens // 16) * 16
    sizes = list(range(16, min(128, top) + 1, 16))
    while sizes[-1] < top:
        sizes.append(min(top, sizes[-1] + (sizes[-1] // 8) // 16 * 16))
    return sizes


class _Pieces:
    """One bucket's graphs and the attention calls between them."""

    def __init__(self, num_tokens: int) -> None:
        self.num_tokens = num_tokens
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.attends: list[Callable] = []  # attends[i] runs after graphs[i]
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None  # (h, residual)


class PrefillGraphs:
    """The captured buckets, their static inputs and the q / attention-output buffers."""

    def __init__(self, model: torch.nn.Module, pool: KVPool, max_tokens: int) -> None:
        device = pool.cache.device
        self.model, self.pool = model, pool
        self.kv_cache, self.kv_scales = pool.cache, pool.scales
        self.scratch_slot = pool.scratch_block * pool.block_size
        self.sizes = prefill_graph_sizes(max_tokens)
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slots = torch.full((n,), self.scratch_slot, dtype=torch.int64, device=device)
        # [n, q_heads, head_dim], made at the first split (from q's shape), outside any graph
        self.q: torch.Tensor | None = None
        self.attn_out: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None  # [n, hidden]: the last piece's (h, residual)
        self.residual: torch.Tensor | None = None
        self.buckets: dict[int, _Pieces] = {}
        self._capturing: _Pieces | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._mempool = None

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.input_ids.shape[0] <= self.sizes[-1] and bool(self.buckets)

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """The forward of batch (any mix of requests); returns logits [num_sampled, vocab]."""
        t = batch.input_ids.shape[0]
        pieces = self.buckets[next(size for size in self.sizes if size >= t)]
        self._load_inputs(batch, pieces.num_tokens)
        assert self.q is not None and self.attn_out is not None
        q, out = self.q[:t], self.attn_out[:t]
        for graph, attend in zip(pieces.graphs, pieces.attends, strict=False):
            graph.replay()
            attend(q, batch, out=out)
        pieces.graphs[-1].replay()
        assert pieces.outputs is not None
        return self.model.logits(*pieces.outputs, batch.logits_indices)

    def _load_inputs(self, batch: ForwardBatch, bucket: int) -> None:
        t = batch.input_ids.shape[0]
        self.input_ids[:t].copy_(batch.input_ids)
        self.positions[:t].copy_(batch.positions)
        self.slots[:t].copy_(batch.slots)
        self.input_ids[t:bucket].zero_()
        self.positions[t:bucket].zero_()
        self.slots[t:bucket].fill_(self.scratch_slot)

    def static_batch(self, num_tokens: int) -> ForwardBatch:
        """A one-request prefill of num_tokens over the scratch block: the capture's (and the
        warm-up's) batch; at replay only its input tensors are read."""
        device, scratch = self.input_ids.device, self.pool.scratch_block
        blocks = -(-num_tokens // self.pool.block_size)
        return ForwardBatch(
            input_ids=self.input_ids[:num_tokens],
            positions=self.positions[:num_tokens],
            slots=self.slots[:num_tokens],
            block_tables=torch.full((1, blocks), scratch, dtype=torch.int32, device=device),
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=device),
            query_start=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
            max_query_len=num_tokens,
            is_decode=False,
            logits_indices=torch.tensor([num_tokens - 1], device=device),
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every bucket, largest first (smaller ones reuse its memory)."""
        started = time.perf_counter()
        self._mempool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        # No garbage collection inside a capture (torch.cuda.graph collects before each one):
        # freeing an unreachable CUDA graph or tensor there is an illegal call that breaks the
        # capture and the device context (seen on the H200: an earlier test's runner, freed by
        # the collector in the middle of a piece).
        gc.collect()
        gc.disable()
        try:
            with torch.cuda.stream(stream):
                for size in reversed(self.sizes):
                    self._capture_bucket(size)
        finally:
            gc.enable()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        log.info(
            "captured piecewise prefill CUDA graphs for %d token buckets up to %d (%.1f s)",
            len(self.sizes),
            self.sizes[-1],
            time.perf_counter() - started,
        )

    def _capture_bucket(self, size: int) -> None:
        batch = self.static_batch(size)

        def attend_now(q: torch.Tensor, attend: Callable) -> torch.Tensor:
            if self.q is None:  # the largest bucket's warm-up sizes the buffers
                self.q = torch.zeros((self.sizes[-1], *q.shape[1:]), dtype=q.dtype, device=q.device)
                self.attn_out = torch.zeros_like(self.q)
            return attend(q, batch)

        # warm-up, eagerly: Triton compiles, cuBLAS picks its kernels for this many rows
        h, _ = self.model.hidden_states(
            replace(batch, split_at_attention=attend_now), self.kv_cache, self.kv_scales
        )
        if self.hidden is None:
            self.hidden = torch.zeros((self.sizes[-1], h.shape[1]), dtype=h.dtype, device=h.device)
            self.residual = torch.zeros_like(self.hidden)
        assert self.residual is not None
        torch.cuda.synchronize()
        pieces = _Pieces(size)
        self._capturing = pieces
        self._begin()
        h, residual = self.model.hidden_states(
            replace(batch, split_at_attention=self._split), self.kv_cache, self.kv_scales
        )
        pieces.outputs = self.hidden[:size], self.residual[:size]
        pieces.outputs[0].copy_(h)  # into buffers every bucket shares: the pool keeps nothing
        pieces.outputs[1].copy_(residual)
        self._end()
        self._capturing = None
        self.buckets[size] = pieces

    def _begin(self) -> None:
        self._graph = torch.cuda.CUDAGraph()
        self._graph.capture_begin(pool=self._mempool)

    def _end(self) -> None:
        assert self._graph is not None and self._capturing is not None
        self._graph.capture_end()
        self._capturing.graphs.append(self._graph)
        self._graph = None

    def _split(self, q: torch.Tensor, attend: Callable) -> torch.Tensor:
        """Called by each layer during capture: ends the piece with q copied into the static
        buffer, records the layer's attention, starts the next piece; returns the static
        attention output the next piece reads."""
        pieces = self._capturing
        assert pieces is not None and self.q is not None and self.attn_out is not None
        self.q[: pieces.num_tokens].copy_(q)
        self._end()
        pieces.attends.append(attend)
        self._begin()
        return self.attn_out[: pieces.num_tokens]

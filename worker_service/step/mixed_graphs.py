"""Whole-forward CUDA graphs of small prefill and mixed steps, attention inside (GPU only).

The piecewise prefill graphs (prefill_graphs.py) run attention eagerly between their pieces: on
the H200 a 128-token prefill still took ~4 ms of host time for ~1.4 ms of GPU work, ~9 ms beside
one decode (benchmarks/NOTES.md, session 12). A step of a few requests and up to a thousand
tokens replays one graph here instead. Attention can be captured once its launches see fixed
shapes, so each token bucket has a fixed layout:

    rows [0, DECODE_SLOTS)                 one-token requests (decode attention, DECODE_SLOTS rows)
    rows [DECODE_SLOTS, DECODE_SLOTS + size)  the other requests' tokens, up to EXTEND_SLOTS
                                              requests (extend attention, grid sized by the bucket)

A step with d one-token requests and t other tokens moves its rows into that layout: its first d
rows to [0, d), the rest to [DECODE_SLOTS, DECODE_SLOTS + t). Unused decode slots are padding (one
token at position 0 over the scratch block); unused extend slots have no tokens, so their
programs and the query tiles past a request's tokens exit at once; padding token rows write K/V
into the scratch block only, and no attention reads them. The captured decode attention is the
plain one: a step's prefix groups (ForwardBatch.prefix_groups) are not used here (the same
result; at DECODE_SLOTS rows the shared prefix costs little).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.step.prefill_graphs import prefill_graph_sizes

if TYPE_CHECKING:
    from yaie.worker_service.step.kv_pool import KVPool

log = logging.getLogger(__name__)

DECODE_SLOTS = 8  # one-token requests a step may hold
EXTEND_SLOTS = 8  # other requests a step may hold
# Above ~1k tokens the piecewise graphs' eager attention costs less than the forward's own GPU
# time, and larger buckets would only add memory and capture time.
DEFAULT_MAX_TOKENS = 1024


class MixedGraphs:
    """Static inputs in the layout above, and one captured graph per token bucket."""

    def __init__(
        self, model: torch.nn.Module, pool: KVPool, max_tokens: int, max_blocks_per_seq: int
    ) -> None:
        device = pool.cache.device
        self.model = model
        self.kv_cache, self.kv_scales = pool.cache, pool.scales
        self.scratch_block = pool.scratch_block
        self.scratch_slot = pool.scratch_block * pool.block_size
        self.sizes = prefill_graph_sizes(max_tokens)
        d, s = DECODE_SLOTS, EXTEND_SLOTS
        n = d + self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slots = torch.full((n,), self.scratch_slot, dtype=torch.int64, device=device)
        self.block_tables = torch.full(
            (d + s, max_blocks_per_seq), self.scratch_block, dtype=torch.int32, device=device
        )
        self.seq_lens = torch.ones(d + s, dtype=torch.int32, device=device)
        self.query_start = torch.zeros(d + s + 1, dtype=torch.int32, device=device)  # unread
        self.extend_query_start = torch.zeros(s + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.zeros(d + s, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    def static_batch(self, size: int) -> ForwardBatch:
        """The bucket's batch over the static inputs (what its graph reads)."""
        rows = DECODE_SLOTS + size
        return ForwardBatch(
            input_ids=self.input_ids[:rows],
            positions=self.positions[:rows],
            slots=self.slots[:rows],
            block_tables=self.block_tables,
            seq_lens=self.seq_lens,
            query_start=self.query_start,
            max_query_len=size,
            is_decode=False,
            logits_indices=self.logits_indices,
            num_single=DECODE_SLOTS,
            extend_query_start=self.extend_query_start,
        )

    def bucket(self, batch: ForwardBatch) -> int | None:
        """The token bucket batch fits, None when it does not fit the layout."""
        d = batch.num_single
        t = batch.input_ids.shape[0] - d
        if (
            batch.is_decode
            or d > DECODE_SLOTS
            or batch.batch_size - d > EXTEND_SLOTS
            or t > self.sizes[-1]
            or batch.block_tables.shape[1] > self.block_tables.shape[1]
        ):
            return None
        return next(size for size in self.sizes if size >= t)

    def can_run(self, batch: ForwardBatch) -> bool:
        size = self.bucket(batch)
        return size is not None and size in self.graphs

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Replays the bucket's graph on batch; returns logits [num_sampled, vocab]."""
        size = self.bucket(batch)
        assert size is not None
        self.load(batch, size)
        self.graphs[size].replay()
        return self.logits[size][: batch.logits_indices.shape[0]]

    def load(self, batch: ForwardBatch, size: int) -> None:
        """batch's tensors into the static inputs of bucket size, in the layout above."""
        d, slots = batch.num_single, DECODE_SLOTS
        e = batch.batch_size - d
        t = batch.input_ids.shape[0] - d
        width = batch.block_tables.shape[1]
        ends = (d, slots, slots + t, slots + size)  # real, padding, real, padding rows
        for static, source, pad in (
            (self.input_ids, batch.input_ids, 0),
            (self.positions, batch.positions, 0),
            (self.slots, batch.slots, self.scratch_slot),
        ):
            static[:d].copy_(source[:d])
            static[slots : ends[2]].copy_(source[d:])
            for lo, hi in ((ends[0], ends[1]), (ends[2], ends[3])):
                if hi > lo:
                    static[lo:hi].fill_(pad)
        self.block_tables[:d, :width].copy_(batch.block_tables[:d])
        self.block_tables[slots : slots + e, :width].copy_(batch.block_tables[d:])
        self.seq_lens[:d].copy_(batch.seq_lens[:d])
        self.seq_lens[slots : slots + e].copy_(batch.seq_lens[d:])
        if d < slots:  # padding decode rows: one token over the scratch block
            self.block_tables[d:slots, 0].fill_(self.scratch_block)
            self.seq_lens[d:slots].fill_(1)
        if d:
            assert batch.extend_query_start is not None
            self.extend_query_start[: e + 1].copy_(batch.extend_query_start)
        else:
            self.extend_query_start[: e + 1].copy_(batch.query_start)
        self.extend_query_start[e + 1 :].fill_(t)  # empty extend slots
        # sampled rows: a row past the one-token ones moves by slots - d
        rows = batch.logits_indices
        moved = self.logits_indices[: rows.shape[0]]
        torch.where(rows >= d, rows + (slots - d), rows, out=moved)
        if rows.shape[0] < self.logits_indices.shape[0]:  # stale rows may lie past this bucket
            self.logits_indices[rows.shape[0] :].zero_()

    @torch.inference_mode()
    def capture(self) -> None:
        """One graph per bucket, largest first (smaller ones reuse its memory)."""
        started = time.perf_counter()
        pool = None
        for size in reversed(self.sizes):
            batch = self.static_batch(size)
            self.model.forward(batch, self.kv_cache, self.kv_scales)  # warm-up: Triton, cuBLAS
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self.model.forward(batch, self.kv_cache, self.kv_scales)
            pool = graph.pool()
            self.graphs[size], self.logits[size] = graph, logits
        torch.cuda.synchronize()
        log.info(
            "captured mixed-step CUDA graphs for %d token buckets up to %d (%d + %d requests, "
            "%.1f s)",
            len(self.sizes),
            self.sizes[-1],
            DECODE_SLOTS,
            EXTEND_SLOTS,
            time.perf_counter() - started,
        )

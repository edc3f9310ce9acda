"""CUDA graphs of the decode forward pass, one per batch-size bucket (GPU only).

A decode batch of b requests replays the graph of the smallest bucket >= b; rows b.. of the
bucket are padding that reads and writes only the pool's scratch block. With grouped attention
on, buckets from GROUPED_MIN_BATCH up also get a second graph whose attention reads each shared
prefix once per group (decode_attention_grouped), over a fixed number of group slots.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

import yaie.kernels.attention as attention
from yaie.kernels.attention import PrefixGroups
from yaie.worker_service.forward_batch import ForwardBatch

if TYPE_CHECKING:
    from yaie.worker_service.step.kv_pool import KVPool

log = logging.getLogger(__name__)

GROUPED_MIN_BATCH = 4  # below, groups rarely save batch_builder.MIN_SAVED_TOKENS reads
MAX_GROUP_SLOTS = 32  # group slots of a grouped graph: min(bucket // 2, this)


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch_size."""
    sizes = [b for b in (1, 2, 4, 8) if b <= max_batch_size]
    sizes += list(range(16, max_batch_size + 1, 16))
    return sizes


class DecodeGraphs:
    """Captured decode graphs sharing one set of static inputs and one memory pool."""

    def __init__(
        self,
        model: torch.nn.Module,
        pool: KVPool,
        max_batch_size: int,
        max_blocks_per_seq: int,
        grouped: bool = False,
    ) -> None:
        device = pool.cache.device
        scratch_block = pool.scratch_block
        self.model = model
        self.kv_cache, self.kv_scales = pool.cache, pool.scales
        self.scratch_block = scratch_block
        self.scratch_slot = scratch_block * pool.block_size
        self.batch_sizes = graph_batch_sizes(max_batch_size)
        n = self.batch_sizes[-1]
        # Static inputs [n] / [n, max_blocks_per_seq]; every row starts as padding.
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slots = torch.full((n,), self.scratch_slot, dtype=torch.int64, device=device)
        self.block_tables = torch.full(
            (n, max_blocks_per_seq), scratch_block, dtype=torch.int32, device=device
        )
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.rows = torch.arange(n, dtype=torch.int32, device=device)  # constant
        self.decode_order = self.rows.clone()  # a permutation of the bucket's rows
        self.query_start = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        # Grouped graphs: bucket -> group slots; static group tensors (every slot empty at first).
        self.num_group_slots = {
            b: min(b // 2, MAX_GROUP_SLOTS)
            for b in self.batch_sizes
            if grouped and b >= GROUPED_MIN_BATCH
        }
        g = max(self.num_group_slots.values(), default=0)
        self.group_rows = torch.zeros(n, dtype=torch.int32, device=device)
        self.group_starts = torch.zeros(g + 1, dtype=torch.int32, device=device)
        self.group_prefix_lens = torch.zeros(g, dtype=torch.int32, device=device)
        self.group_kv_start = torch.zeros(n, dtype=torch.int32, device=device)
        self.grouped_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.grouped_logits: dict[int, torch.Tensor] = {}

    def group_slots(self, b: int) -> int:
        """Groups a decode batch of b rows may have to run as a graph (0: no grouped graph)."""
        bucket = next((size for size in self.batch_sizes if size >= b), None)
        return self.num_group_slots.get(bucket, 0) if bucket is not None else b

    def _static_groups(self, b: int) -> PrefixGroups:
        g = self.num_group_slots[b]
        return PrefixGroups(
            self.group_rows[:b],
            self.group_starts[: g + 1],
            self.group_prefix_lens[:g],
            self.group_kv_start[:b],
        )

    def _static_batch(self, b: int, grouped: bool = False) -> ForwardBatch:
        return ForwardBatch(
            self.input_ids[:b],
            self.positions[:b],
            self.slots[:b],
            self.block_tables[:b],
            self.seq_lens[:b],
            self.query_start[: b + 1],
            1,
            True,
            self.logits_indices[:b],
            prefix_groups=self._static_groups(b) if grouped else None,
            decode_order=None if grouped else self.decode_order[:b],
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures one graph per bucket, largest first, so smaller ones reuse its memory."""
        pool = None
        for b in reversed(self.batch_sizes):
            for grouped in (False, True) if b in self.num_group_slots else (False,):
                batch = self._static_batch(b, grouped)
                # Warm up: Triton autotune, allocator.
                self.model.forward(batch, self.kv_cache, self.kv_scales)
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = self.model.forward(batch, self.kv_cache, self.kv_scales)
                pool = graph.pool()
                graphs, outputs = (
                    (self.grouped_graphs, self.grouped_logits)
                    if grouped
                    else (self.graphs, self.logits)
                )
                graphs[b], outputs[b] = graph, logits
        torch.cuda.synchronize()
        log.info(
            "captured decode CUDA graphs for batch sizes %s (grouped attention: %s)",
            self.batch_sizes,
            sorted(self.num_group_slots) or "off",
        )

    def can_run(self, batch: ForwardBatch) -> bool:
        groups = batch.prefix_groups
        return (
            batch.is_decode
            and (
                groups is None or groups.prefix_lens.shape[0] <= self.group_slots(batch.batch_size)
            )
            and batch.batch_size <= self.batch_sizes[-1]
            and batch.block_tables.shape[1] <= self.block_tables.shape[1]
            and batch.logits_indices.shape[0] == batch.batch_size
        )

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Replays the bucket's graph on batch (a decode batch); returns logits [b, vocab]."""
        b = batch.batch_size
        bucket = next(size for size in self.batch_sizes if size >= b)
        self.input_ids[:b].copy_(batch.input_ids)
        self.positions[:b].copy_(batch.positions)
        self.slots[:b].copy_(batch.slots)
        self.block_tables[:b, : batch.block_tables.shape[1]].copy_(batch.block_tables)
        self.seq_lens[:b].copy_(batch.seq_lens)
        if bucket > b:  # rows b..bucket are padding: one token at position 0 in the scratch block
            self.input_ids[b:bucket].zero_()
            self.positions[b:bucket].zero_()
            self.slots[b:bucket].fill_(self.scratch_slot)
            self.block_tables[b:bucket, 0].fill_(self.scratch_block)
            self.seq_lens[b:bucket].fill_(1)
        if batch.prefix_groups is None:
            if bucket >= attention.DECODE_ORDER_MIN_BATCH:  # smaller graphs do not read it
                self._load_order(batch.decode_order, b, bucket)
            self.graphs[bucket].replay()
            return self.logits[bucket][:b]
        self._load_groups(batch.prefix_groups, b, bucket)
        self.grouped_graphs[bucket].replay()
        return self.grouped_logits[bucket][:b]

    def _load_order(self, order: torch.Tensor | None, b: int, bucket: int) -> None:
        """The rows longest first (the padding, one token each, last): a permutation of the
        bucket's rows whatever an earlier step left in the buffer."""
        self.decode_order[:b].copy_(order if order is not None else self.rows[:b])
        if bucket > b:
            self.decode_order[b:bucket].copy_(self.rows[b:bucket])

    def _load_groups(self, groups: PrefixGroups, b: int, bucket: int) -> None:
        """The step's groups into the bucket's static slots; the slots past them are empty."""
        num_groups, num_rows = groups.prefix_lens.shape[0], groups.rows.shape[0]
        slots = self.num_group_slots[bucket]
        self.group_rows[:num_rows].copy_(groups.rows)
        self.group_starts[: num_groups + 1].copy_(groups.starts)
        self.group_starts[num_groups + 1 : slots + 1].fill_(num_rows)
        self.group_prefix_lens[:num_groups].copy_(groups.prefix_lens)
        self.group_prefix_lens[num_groups:slots].zero_()
        self.group_kv_start[:b].copy_(groups.kv_start)
        self.group_kv_start[b:bucket].zero_()

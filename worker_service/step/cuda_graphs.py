"""CUDA graphs of the decode forward pass, one per batch-size bucket (GPU only).

A decode batch of b requests replays the graph of the smallest bucket >= b; rows b.. of the
bucket are padding that reads and writes only the pool's scratch block.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from yaie.worker_service.forward_batch import ForwardBatch

if TYPE_CHECKING:
    from yaie.worker_service.step.kv_pool import KVPool

log = logging.getLogger(__name__)


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
        self.query_start = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    def _static_batch(self, b: int) -> ForwardBatch:
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
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures one graph per bucket, largest first, so smaller ones reuse its memory."""
        pool = None
        for b in reversed(self.batch_sizes):
            batch = self._static_batch(b)
            # Warm up: Triton autotune, allocator.
            self.model.forward(batch, self.kv_cache, self.kv_scales)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[b] = self.model.forward(batch, self.kv_cache, self.kv_scales)
            pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize()
        log.info("captured decode CUDA graphs for batch sizes %s", self.batch_sizes)

    def can_run(self, batch: ForwardBatch) -> bool:
        return (
            batch.is_decode
            and batch.prefix_groups is None  # grouped attention runs eagerly
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
        # Rows b..bucket are padding: one token at position 0 in the scratch block.
        self.input_ids[b:bucket].zero_()
        self.positions[b:bucket].zero_()
        self.slots[b:bucket].fill_(self.scratch_slot)
        self.block_tables[b:bucket, 0].fill_(self.scratch_block)
        self.seq_lens[b:bucket].fill_(1)
        self.graphs[bucket].replay()
        return self.logits[bucket][:b]

"""Batch-invariant ("deterministic") mode: a request's logits are the same bit for bit whatever
else is in the batch, however its prompt was chunked and whether its prefix came from the cache.

Inside `batch_invariant_mode()` (thread-local; the worker enters it around each forward and
around CUDA-graph capture):
- every F.linear runs a fixed-tiling matmul whose reduction order per output element does not
  depend on the number of rows (matmul.py: fixed-M chunks on the CPU, a Triton kernel with fixed
  tiles and no split-K on CUDA);
- attention on the CPU backends runs attention.py (keys in fixed blocks aligned to absolute
  positions, one online softmax per query), and Triton decode attention a fixed split count
  (its split bounds then depend on the request's length only). Triton extend attention already
  walks keys in BLOCK_N tiles from position 0, so its reduction per query is chunk-invariant.
RMSNorm, rotary, the activations and the sampler reduce per row already.
"""

from __future__ import annotations

from yaie.kernels.batch_invariant.mode import batch_invariant_mode, is_active

__all__ = ["batch_invariant_mode", "is_active", "INVARIANT_DECODE_SPLITS"]

# Split count of Triton decode attention in the mode (not derived from the batch).
INVARIANT_DECODE_SPLITS = 16

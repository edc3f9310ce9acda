"""Batched sampling on the logits' device: greedy, temperature, top-k / top-p / min-p, penalties,
logit bias, per-request seeds and top-n logprobs, with no host sync beyond the token ids.

  config.py       SamplingConfig, one request's parameters (pure Python: what the scheduler uses)
  batch.py        SamplingBatch, a batch's parameters as device tensors
  noise.py        the counter-based random numbers: (seed, position, token id) -> uniform
  sampler.py      sample() and process_logits(), the public operations, with a backend choice
  reference.py    the torch reference of every stage (the specification)
  triton_*.py     Triton kernels: the sampling kernel (sample, its search and draw), penalties

The names below other than SamplingConfig load their module on first use (PEP 562 __getattr__):
importing this package, or config.py through it, must not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from yaie.kernels.sampling.config import SamplingConfig

if TYPE_CHECKING:
    from yaie.kernels.sampling.batch import SamplingBatch
    from yaie.kernels.sampling.reference import apply_penalties, draw_reference, filter_thresholds
    from yaie.kernels.sampling.sampler import SampleOutput, process_logits, sample

__all__ = [
    "SampleOutput",
    "SamplingBatch",
    "SamplingConfig",
    "apply_penalties",
    "draw_reference",
    "filter_thresholds",
    "process_logits",
    "sample",
]
# name -> the module (of this package) that defines it and imports torch
_TORCH_NAMES = {
    "SamplingBatch": "batch",
    "SampleOutput": "sampler",
    "sample": "sampler",
    "process_logits": "sampler",
    "apply_penalties": "reference",
    "filter_thresholds": "reference",
    "draw_reference": "reference",
}


def __getattr__(name: str) -> Any:
    """The first use of a torch name imports its module; later uses find it in globals()."""
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_TORCH_NAMES[name]}"), name)
    globals()[name] = value
    return value

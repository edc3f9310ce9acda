"""fp32 linear layers on the CPU over oneDNN-packed weights (the kernel torch's inductor uses for
CPU linear layers once it has frozen their weights).

aten's fp32 matmul calls MKL's sgemm, which at the few rows of a decode step runs far under the
machine's memory bandwidth: on the 2-core AMD EPYC we develop on, the logits matmul [8 x 576] x
[576 x 49,152] takes 12.5 ms (7 GB/s of weights, where a plain sum reads 32 GB/s); oneDNN's
kernel over a weight reordered once at load takes 3.8 ms. A whole decode step of the built-in
model, every linear layer and the logits packed: batch 1 39.7 -> 22.8 ms, 4: 66.0 -> 24.8, 8:
60.5 -> 28.0 (benchmarks/NOTES.md, "Session 8"; `benchmarks/bench_cpu_forward.py`).
The results differ from MKL's by float rounding only (~1e-4 on the logits), as any two GEMMs do.

The ops are torch's own (torch.ops.mkldnn) but not public API: pack_linears() probes them once
and leaves the model as it is where they are missing or disagree with F.linear.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's packed layout; x [T, in] float32 on the CPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_empty(0, self.out_features)
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed, self.bias, "none", [], ""
        )


@functools.cache
def packing_works() -> bool:
    """Whether this torch has the packed ops and they compute F.linear (checked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(96, 64, generator=generator)
        bias = torch.randn(96, generator=generator)
        x = torch.randn(5, 64, generator=generator)
        with torch.inference_mode():
            ours = PackedLinear(weight, bias)(x)
        return torch.allclose(ours, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    except (AttributeError, RuntimeError) as exc:
        log.info("oneDNN packed linear unavailable (%s): using aten's matmul", exc)
        return False


def pack_linears(module: nn.Module) -> int:
    """Replaces each float32 CPU nn.Linear under module by a PackedLinear (the dense weight is
    dropped); returns how many. Layers split over tensor-parallel ranks are left alone."""
    if not packing_works():
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _packable(child):
                setattr(parent, name, PackedLinear(child.weight, child.bias))
                count += 1
    return count


def _packable(layer: nn.Module) -> bool:
    """A plain linear layer: nn.Linear itself, or RowParallelLinear without a group (tp None)."""
    if not isinstance(layer, nn.Linear) or getattr(layer, "tp", None) is not None:
        return False
    return layer.weight.device.type == "cpu" and layer.weight.dtype == torch.float32

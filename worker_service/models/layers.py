"""Layers shared by the Llama-family decoders: RMSNorm, rotary embedding (default, linear, llama3,
yarn scaling) and the gated MLP, each computing exactly what transformers computes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from yaie.kernels.attention import resolve_backend
from yaie.kernels.elementwise import add_rms_norm, rms_norm, rotary_tables, silu_and_mul
from yaie.kernels.linear import silu_gated_linear
from yaie.worker_service.models.parallel import Linear, RowParallelLinear

if TYPE_CHECKING:
    from yaie.worker_service.tp import TPGroup

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def use_triton(x: torch.Tensor, backend: str) -> bool:
    """Whether the fused Triton kernels run for x (they do where Triton attention would)."""
    return resolve_backend(backend, x.is_cuda) == "triton"


class RMSNorm(nn.Module):
    """x / rms(x) in float32, cast back to the input dtype, then times the weight."""

    def __init__(
        self, dim: int, eps: float, dtype: torch.dtype | None = None, backend: str = "torch"
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.eps, self.backend = eps, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.backend)

    def forward_add(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); the Triton path updates residual in place."""
        return add_rms_norm(x, residual, self.weight, self.eps, self.backend)


def _base_inv_freq(theta: float, head_dim: int) -> torch.Tensor:
    """[head_dim / 2] float32: theta ** (-2i / head_dim)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by factor, short kept, the band between interpolated."""
    factor = rope["factor"]
    low_freq_factor, high_freq_factor = rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(
    rope: dict[str, Any], head_dim: int, max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    """YaRN: extrapolated high frequencies, interpolated low ones, a linear ramp between."""
    theta, dim = rope["rope_theta"], head_dim
    original = rope["original_max_position_embeddings"]
    factor = rope.get("factor") or max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        m, m_all = rope.get("mscale"), rope.get("mscale_all_dim")
        attention_factor = (
            mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
        )

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low = correction_dim(rope.get("beta_fast") or 32)
    high = correction_dim(rope.get("beta_slow") or 1)
    if rope.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoids a division by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation_weight = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq, float(attention_factor)


def rope_inv_freq(
    rope: dict[str, Any], head_dim: int, max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim / 2] float32 on the CPU, scaling applied to cos and sin)."""
    rope_type = rope["rope_type"]
    if rope_type == "yarn":
        return _yarn_inv_freq(rope, head_dim, max_position_embeddings)
    inv_freq = _base_inv_freq(rope["rope_theta"], head_dim)
    if rope_type == "linear":
        inv_freq = inv_freq / rope["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope)
    return inv_freq, 1.0


@dataclass
class RopeInputs:
    """The rotary embedding's inputs for one forward pass, shared by every layer."""

    positions: torch.Tensor  # [T] int64
    inv_freq: torch.Tensor  # [head_dim / 2] float32
    attention_scaling: float
    cos: torch.Tensor | None = None  # [T, 1, head_dim] in the activation dtype (torch path)
    sin: torch.Tensor | None = None


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the positions of one batch, computed on the fly (no cache to outgrow)."""

    def __init__(self, rope: dict[str, Any], head_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.rope, self.head_dim, self.max_pos = rope, head_dim, max_position_embeddings
        inv_freq, self.attention_scaling = rope_inv_freq(rope, head_dim, max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_inv_freq(self) -> None:
        """Recomputes inv_freq in place (after the model was materialised from the meta device)."""
        inv_freq, _ = rope_inv_freq(self.rope, self.head_dim, self.max_pos)
        self.inv_freq.copy_(inv_freq)

    def inputs(self, positions: torch.Tensor, dtype: torch.dtype, fused: bool) -> RopeInputs:
        """What the layers need for positions [T]; cos/sin tables only for the torch path (the
        fused kernel computes them itself)."""
        rope = RopeInputs(positions, self.inv_freq, self.attention_scaling)
        if not fused:
            tables = rotary_tables(positions, self.inv_freq, self.attention_scaling, dtype)
            rope.cos, rope.sin = tables
        return rope


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), gate and up fused into one matmul. With tp, each rank holds
    intermediate / tp.size columns of gate and up (column-parallel) and the matching input
    columns of down (row-parallel: its partial sums are all-reduced)."""

    def __init__(
        self,
        hidden: int,
        intermediate: int,
        act: str,
        bias: bool,
        dtype: torch.dtype,
        backend: str = "torch",
        tp: TPGroup | None = None,
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {act!r}; supported: {', '.join(ACTIVATIONS)}")
        intermediate //= tp.size if tp is not None else 1
        self.intermediate, self.act_name, self.backend = intermediate, act, backend
        self.gate_up_proj = Linear(hidden, 2 * intermediate, bias, dtype, backend)
        self.down_proj = RowParallelLinear(intermediate, hidden, bias, dtype, tp, backend)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.act_name == "silu" and isinstance(self.gate_up_proj, Linear)  # not packed
        if fused:  # one skinny kernel for a decode step's rows on CUDA
            gate_up = self.gate_up_proj
            return self.down_proj(silu_gated_linear(x, gate_up.weight, gate_up.bias, self.backend))
        gate_up = self.gate_up_proj(x)
        if self.act_name == "silu":
            return self.down_proj(silu_and_mul(gate_up, self.backend))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return self.down_proj(self.act(gate) * up)

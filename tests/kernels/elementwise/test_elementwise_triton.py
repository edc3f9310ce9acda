"""Fused Triton layer kernels (kernels/elementwise/triton_fused.py) against the torch layers they
replace: CPU interpreter (fp32, fp16) in a child process, CUDA (bf16) directly. A whole model on
them: tests/worker_service/test_models_triton.py.

The child process: triton.jit picks compiled-vs-interpreted from TRITON_INTERPRET when a kernel
module is imported, so the interpreter cases run in a child pytest of this file (see
tests/kernels/attention/test_attention_triton.py for the same arrangement).
"""

from __future__ import annotations

import os

import pytest
import torch

from yaie.kernels.elementwise import apply_rotary
from yaie.worker_service.models.layers import RMSNorm, RotaryEmbedding

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
EXPECTED_CHILD_TESTS = 7
if INTERPRET:
    CASES = [("cpu", torch.float32), ("cpu", torch.float16)]
elif CUDA:
    CASES = [("cuda", torch.bfloat16), ("cuda", torch.float32)]
else:
    CASES = []
kernel_cases = pytest.mark.parametrize(("device", "dtype"), CASES)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def test_fused_kernels_match_torch_under_triton_interpreter(interpreter_child) -> None:
    """The interpreter cases of this file all pass in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = TOLERANCE[expected.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


@kernel_cases
def test_add_rms_norm_matches_torch(device, dtype):
    from yaie.kernels.elementwise.triton_fused import add_rms_norm_triton

    norm = RMSNorm(96, 1e-6, dtype).to(device)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(5, 96, dtype=dtype, device=device)
    residual = torch.randn(5, 96, dtype=dtype, device=device)
    _close(add_rms_norm_triton(x, norm.weight, 1e-6), norm(x))
    expected, expected_residual = norm.forward_add(x, residual)
    out = add_rms_norm_triton(x, norm.weight, 1e-6, residual)  # residual becomes x + residual
    _close(residual, expected_residual)
    _close(out, expected)


@kernel_cases
@pytest.mark.parametrize("with_norm", [False, True])
def test_qk_norm_rope_matches_torch(device, dtype, with_norm):
    from yaie.kernels.elementwise.triton_fused import qk_norm_rope_triton

    heads, kv_heads, head_dim, tokens = 4, 2, 32, 8
    rope = {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    rotary = RotaryEmbedding(rope, head_dim, 256).to(device)
    q_norm, k_norm = RMSNorm(head_dim, 1e-6, dtype), RMSNorm(head_dim, 1e-6, dtype)
    q_norm.weight.data.uniform_(0.5, 1.5)
    k_norm.weight.data.uniform_(0.5, 1.5)
    q_norm, k_norm = q_norm.to(device), k_norm.to(device)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device)
    positions = torch.tensor([0, 1, 7, 63, 64, 200, 40000, 131071], device=device)
    inputs = rotary.inputs(positions, dtype, fused=False)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k = q.reshape(tokens, heads, head_dim), k.reshape(tokens, kv_heads, head_dim)
    if with_norm:
        q, k = q_norm(q), k_norm(k)
    expected_q = apply_rotary(q, inputs.cos, inputs.sin).reshape(tokens, -1)
    expected_k = apply_rotary(k, inputs.cos, inputs.sin).reshape(tokens, -1)
    expected_v = v.clone()
    norms = (q_norm.weight, k_norm.weight) if with_norm else (None, None)
    qk_norm_rope_triton(
        qkv,
        heads,
        kv_heads,
        head_dim,
        positions,
        rotary.inv_freq,
        rotary.attention_scaling,
        *norms,
        eps=1e-6,
    )
    q_out, k_out, v_out = qkv.split(
        [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1
    )
    _close(q_out, expected_q)
    _close(k_out, expected_k)
    assert torch.equal(v_out, expected_v)


@kernel_cases
def test_silu_and_mul_matches_torch(device, dtype):
    from yaie.kernels.elementwise.triton_fused import silu_and_mul_triton

    gate_up = torch.randn(7, 2 * 1500, dtype=dtype, device=device) * 3
    gate, up = gate_up.split(1500, dim=-1)
    _close(silu_and_mul_triton(gate_up), torch.nn.functional.silu(gate) * up)

"""Fused Triton layer kernels (models/fused.py) against the torch layers they replace: CPU
interpreter (fp32, fp16) in a child process, CUDA (bf16) directly; and a whole model on them.

The child process: triton.jit picks compiled-vs-interpreted from TRITON_INTERPRET when a kernel
module is imported, so the interpreter cases run in a child pytest of this file (see
tests/kernels/test_attention_triton.py for the same arrangement).
"""

from __future__ import annotations

import os

import pytest
import torch

from yaie.worker_service.models.layers import RMSNorm, RotaryEmbedding, apply_rotary

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
    from yaie.worker_service.models.fused import add_rms_norm

    norm = RMSNorm(96, 1e-6, dtype).to(device)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(5, 96, dtype=dtype, device=device)
    residual = torch.randn(5, 96, dtype=dtype, device=device)
    _close(add_rms_norm(x, norm.weight, 1e-6), norm(x))
    expected, expected_residual = norm.forward_add(x, residual)
    out = add_rms_norm(x, norm.weight, 1e-6, residual)  # residual becomes x + residual
    _close(residual, expected_residual)
    _close(out, expected)


@kernel_cases
@pytest.mark.parametrize("with_norm", [False, True])
def test_qk_norm_rope_matches_torch(device, dtype, with_norm):
    from yaie.worker_service.models.fused import qk_norm_rope_

    heads, kv_heads, head_dim, tokens = 4, 2, 32, 8
    rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
            "original_max_position_embeddings": 64}  # fmt: skip
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
    qk_norm_rope_(qkv, heads, kv_heads, head_dim, positions, rotary.inv_freq,
                  rotary.attention_scaling, *norms, eps=1e-6)  # fmt: skip
    q_out, k_out, v_out = qkv.split(
        [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1
    )
    _close(q_out, expected_q)
    _close(k_out, expected_k)
    assert torch.equal(v_out, expected_v)


@kernel_cases
def test_silu_and_mul_matches_torch(device, dtype):
    from yaie.worker_service.models.fused import silu_and_mul

    gate_up = torch.randn(7, 2 * 1500, dtype=dtype, device=device) * 3
    gate, up = gate_up.split(1500, dim=-1)
    _close(silu_and_mul(gate_up), torch.nn.functional.silu(gate) * up)


@pytest.mark.skipif(not (INTERPRET or CUDA), reason="runs in the interpreter child or on CUDA")
def test_model_on_fused_kernels_matches_the_torch_path(tiny_model_dir, make_forward_batch):
    """Qwen3 (q/k norm) prefill then one decode step: logits of the Triton path (fused layers
    and Triton attention, float32) equal the torch path's (same greedy tokens too)."""
    from yaie.worker_service.loader import load_model

    model_dir = tiny_model_dir("Qwen3ForCausalLM", head_dim=32)
    device = "cuda" if CUDA else "cpu"
    models = [load_model(str(model_dir), device, torch.float32, backend) for backend in
              ("torch", "triton")]  # fmt: skip
    prompts = [[5, 9, 200, 31, 77], list(range(40, 63))]
    results = []
    for model in models:
        kv_cache = torch.zeros(2, 2, 8, 16, 2, 32, device=device)
        tables = [[0, 1, 2], [3, 4, 5]]
        with torch.inference_mode():
            prefill = model(make_forward_batch(prompts, [0, 0], tables, 16, device), kv_cache)
            decode = model(make_forward_batch([[3], [4]], [5, 23], tables, 16, device), kv_cache)
        results.append(torch.cat([prefill, decode]))
    tol = 1e-2 if CUDA else 1e-4  # on CUDA, Triton's float32 tl.dot computes in TF32
    top2 = results[0].topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * tol  # rows whose greedy token is not a near tie
    assert torch.equal(results[1].argmax(-1)[clear], results[0].argmax(-1)[clear])
    torch.testing.assert_close(results[1], results[0], atol=tol, rtol=tol)

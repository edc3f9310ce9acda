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
EXPECTED_CHILD_TESTS = 13
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
@pytest.mark.parametrize("fp8_pool", [False, True])
def test_qk_norm_rope_with_store_writes_the_pool_as_store_kv(device, dtype, fp8_pool):
    """The fused store: qkv exactly as without it, the pool (and an fp8 pool's scales) exactly
    as store_kv_reference writes the rotated k and v; other slots untouched."""
    from yaie.kernels.attention import store_kv_reference
    from yaie.kernels.elementwise.triton_fused import KVStore, qk_norm_rope_triton

    heads, kv_heads, head_dim, tokens, block_size, blocks = 4, 2, 32, 6, 4, 5
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    qkv = qkv.to(device)
    qkv[1, heads * head_dim : (heads + 1) * head_dim] = 0  # an all-zero k vector (scale 1)
    positions = torch.tensor([0, 3, 9, 17, 100, 4000], device=device)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)).to(device)
    q_weight = (torch.rand(head_dim, generator=gen) + 0.5).to(dtype).to(device)
    k_weight = (torch.rand(head_dim, generator=gen) + 0.5).to(dtype).to(device)
    slots = torch.tensor([17, 2, 3, 0, 19, 8], device=device)  # out of order, across blocks
    pool_dtype = torch.float8_e4m3fn if fp8_pool else dtype
    shape = (blocks, block_size, kv_heads, head_dim)
    fill = torch.randn(shape, generator=gen).to(pool_dtype).to(device)
    k_cache, v_cache, ref_k, ref_v = (fill.clone() for _ in range(4))
    scales = [torch.rand(blocks, kv_heads, block_size, generator=gen).to(device) for _ in "kv"]
    if fp8_pool:
        (k_scale, v_scale), (ref_ks, ref_vs) = scales, [x.clone() for x in scales]
    else:
        k_scale = v_scale = ref_ks = ref_vs = None
    args = (heads, kv_heads, head_dim, positions, inv_freq, 1.0, q_weight, k_weight)

    expected = qkv.clone()
    qk_norm_rope_triton(expected, *args, eps=1e-6)
    _, k, v = expected.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)
    k, v = k.reshape(tokens, kv_heads, head_dim), v.reshape(tokens, kv_heads, head_dim)
    store_kv_reference(ref_k, ref_v, k, v, slots, ref_ks, ref_vs)

    store = KVStore(k_cache, v_cache, slots, k_scale, v_scale)
    qk_norm_rope_triton(qkv, *args, eps=1e-6, store=store)
    assert torch.equal(qkv, expected)
    for got, want in ((k_cache, ref_k), (v_cache, ref_v)):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    if fp8_pool:
        assert torch.equal(k_scale, ref_ks) and torch.equal(v_scale, ref_vs)


@kernel_cases
def test_qk_norm_rope_store_rejects_a_mismatched_pool(device, dtype):
    from yaie.kernels.elementwise.triton_fused import KVStore, qk_norm_rope_triton

    qkv = torch.randn(3, 8 * 32, dtype=dtype, device=device)
    cache = torch.zeros(4, 4, 2, 32, dtype=dtype, device=device)
    rope = (torch.arange(3, device=device), torch.ones(16, device=device), 1.0)
    with pytest.raises(ValueError, match="slots for 3 tokens"):
        qk_norm_rope_triton(qkv, 4, 2, 32, *rope, store=KVStore(cache, cache.clone(),
                            torch.arange(2, device=device)))  # fmt: skip
    with pytest.raises(ValueError, match="pool heads"):
        qk_norm_rope_triton(qkv, 5, 1, 32, *rope, store=KVStore(cache, cache.clone(),
                            torch.arange(3, device=device)))  # fmt: skip


@kernel_cases
def test_silu_and_mul_matches_torch(device, dtype):
    from yaie.kernels.elementwise.triton_fused import silu_and_mul_triton

    gate_up = torch.randn(7, 2 * 1500, dtype=dtype, device=device) * 3
    gate, up = gate_up.split(1500, dim=-1)
    _close(silu_and_mul_triton(gate_up), torch.nn.functional.silu(gate) * up)

"""The fp8 KV pool: the reference's quantization, the sdpa path and the Triton kernels (under
TRITON_INTERPRET=1, in a child pytest as test_attention_triton.py explains) against the reference.

The reference over an fp8 pool is the specification; it is within e4m3's precision (~3%) of the
same attention over the unquantized K/V.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.kernels.attention.paged_batch import (
    make_paged_batch,
    random_ragged_lengths,
    relative_error,
)
from tests.kernels.triton_modes import gpu_only, interpreter_only
from yaie.kernels.attention import (
    FP8_DTYPE,
    PrefixGroups,
    decode_attention,
    decode_attention_grouped,
    extend_attention,
    store_kv,
)
from yaie.kernels.attention.reference import quantize_fp8

EXPECTED_CHILD_TESTS = 14


def test_quantize_fp8_error_is_within_e4m3_precision_of_each_vector_max():
    """Per (token, head) scale amax / 448: the largest element is exact, every element is off by
    at most half an e4m3 step (2^-4 relative, or 2^-10 * scale below e4m3's normal range)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 128, generator=gen) * torch.logspace(-6, 3, 64)[:, None, None]
    x[5, 2] = 0.0
    values, scale = quantize_fp8(x)
    assert values.dtype == FP8_DTYPE and scale.shape == (64, 4) and scale.dtype == torch.float32
    assert scale[5, 2] == 1.0 and not values[5, 2].float().any()
    restored = values.float() * scale[..., None]
    bound = torch.maximum(x.abs() * 2**-4, scale[..., None] * 2**-10) * 1.0001
    assert ((restored - x).abs() <= bound).all()
    top = x.abs().argmax(dim=-1, keepdim=True)
    assert torch.allclose(restored.gather(-1, top), x.gather(-1, top), rtol=1e-6)


def test_reference_store_into_an_fp8_pool_writes_values_and_scales_at_the_slots():
    k_cache = torch.zeros(4, 8, 2, 64, dtype=FP8_DTYPE)
    v_cache, k_scale, v_scale = k_cache.clone(), torch.zeros(4, 2, 8), torch.zeros(4, 2, 8)
    k, v = torch.randn(3, 2, 64), torch.randn(3, 2, 64) * 1e-3
    slots = torch.tensor([0, 13, 31])
    store_kv(k_cache, v_cache, k, v, slots, backend="torch", k_scale=k_scale, v_scale=v_scale)
    for cache, scales, x in ((k_cache, k_scale, k), (v_cache, v_scale, v)):
        per_slot = scales.transpose(1, 2).reshape(32, 2)  # [slot, head]
        stored = cache.view(32, 2, 64)[slots].float() * per_slot[slots][..., None]
        assert relative_error(stored, x) < 0.05
        untouched = torch.ones(32, dtype=torch.bool)
        untouched[slots] = False
        assert not cache.view(32, 2, 64)[untouched].float().any()


def test_public_operations_reject_missing_or_unexpected_scales():
    fp8 = make_paged_batch([5], [1], 4, 1, 2, 16).to_fp8()
    with pytest.raises(ValueError, match="takes k_scale and v_scale"):
        decode_attention(*fp8.decode_args(), backend="torch")
    with pytest.raises(ValueError, match="takes k_scale and v_scale"):
        extend_attention(*fp8.extend_args(), backend="sdpa", k_scale=fp8.k_scale)
    plain = make_paged_batch([5], [1], 4, 1, 2, 16)
    with pytest.raises(ValueError, match="takes no scales"):
        decode_attention(*plain.decode_args(), backend="torch", **fp8.scales())


@pytest.mark.parametrize(("kv_heads", "q_heads", "head_dim"), [(2, 4, 64), (1, 8, 128)])
def test_fp8_reference_is_within_e4m3_precision_of_unquantized_attention(
    kv_heads, q_heads, head_dim
):
    prefix, new = random_ragged_lengths(3, batch=4, max_prefix=300, max_new=40)
    batch = make_paged_batch(prefix, new, 16, kv_heads, q_heads, head_dim)
    fp8 = batch.to_fp8()
    exact = extend_attention(*batch.extend_args(), backend="torch")
    quantized = extend_attention(*fp8.extend_args(), backend="torch", **fp8.scales())
    assert 0 < relative_error(quantized, exact) < 0.05


@pytest.mark.parametrize("rows", [1, 4])  # the sdpa decode's batch-of-one path and the padded one
def test_sdpa_over_an_fp8_pool_matches_the_reference(rows):
    prefix, new = random_ragged_lengths(7, batch=rows, max_prefix=200, max_new=30)
    fp8 = make_paged_batch(prefix, new, 16, 2, 8, 64).to_fp8()
    ref = extend_attention(*fp8.extend_args(), backend="torch", **fp8.scales())
    out = extend_attention(*fp8.extend_args(), backend="sdpa", **fp8.scales())
    assert relative_error(out, ref) < 1e-5
    decode = make_paged_batch(prefix, [1] * rows, 16, 2, 8, 64).to_fp8()
    ref = decode_attention(*decode.decode_args(), backend="torch", **decode.scales())
    out = decode_attention(*decode.decode_args(), backend="sdpa", **decode.scales())
    assert relative_error(out, ref) < 1e-5


def test_a_pool_of_another_dtype_than_q_is_converted_on_load():
    """A bf16 pool under an fp32 model: every backend reads the bf16 values as fp32."""
    batch = make_paged_batch([40, 9], [3, 1], 16, 2, 4, 64)
    narrow = replace(batch, k_cache=batch.k_cache.bfloat16(), v_cache=batch.v_cache.bfloat16())
    widened = replace(batch, k_cache=narrow.k_cache.float(), v_cache=narrow.v_cache.float())
    ref = extend_attention(*widened.extend_args(), backend="torch")
    for backend in ("torch", "sdpa"):
        assert relative_error(extend_attention(*narrow.extend_args(), backend=backend), ref) < 1e-5


def test_triton_fp8_kernels_match_reference_under_interpreter(interpreter_child) -> None:
    """The interpreter cases of this file all pass in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS, select="interpreter")


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreter_store_kv_into_fp8_pool_is_bit_exact_with_reference(dtype):
    """Values from 1e-4 to 1e2 (e4m3 subnormals and carries into the exponent included) and an
    all-zero vector: the same bytes and scales as quantize_fp8."""
    gen = torch.Generator().manual_seed(0)
    pools = [torch.zeros(8, 16, 3, 64, dtype=FP8_DTYPE) for _ in range(2)]
    scales = [torch.zeros(8, 3, 16) for _ in range(2)]
    k = torch.randn(24, 3, 64, generator=gen) * torch.logspace(-4, 2, 24)[:, None, None]
    k[3] = 0.0
    k, v = k.to(dtype), torch.randn(24, 3, 64, generator=gen).to(dtype)
    slots = torch.randperm(128, generator=gen)[:24]
    expect = [p.clone() for p in pools], [s.clone() for s in scales]
    store_kv(*expect[0], k, v, slots, backend="torch", k_scale=expect[1][0], v_scale=expect[1][1])
    store_kv(*pools, k, v, slots, backend="triton", k_scale=scales[0], v_scale=scales[1])
    for got, want in zip(pools, expect[0], strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert all(torch.equal(a, b) for a, b in zip(scales, expect[1], strict=True))


# (block_size, gqa, head_dim, q dtype, launch parameters)
INTERP_FP8 = [
    (1, 1, 64, torch.float32, {"num_splits": 3, "block_n": 16}),
    (16, 4, 64, torch.float16, {"num_splits": None, "block_n": 16}),
    (64, 8, 128, torch.float32, {"num_splits": 2, "block_n": 32}),
    (16, 2, 64, torch.float16, {"num_splits": 1, "block_n": 32}),  # decode: no reduce pass
]


@interpreter_only
@pytest.mark.parametrize(("block_size", "gqa", "head_dim", "dtype", "launch"), INTERP_FP8)
def test_interpreter_fp8_decode_matches_reference(block_size, gqa, head_dim, dtype, launch):
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    kv_heads = 2 if gqa < 8 else 1
    prefix, _ = random_ragged_lengths(block_size + gqa, batch=3, max_prefix=100, max_new=1)
    batch = make_paged_batch(prefix, [1] * 3, block_size, kv_heads, kv_heads * gqa, head_dim)
    fp8 = replace(batch.to_fp8(), q=batch.q.to(dtype))
    ref = decode_attention(*fp8.decode_args(), backend="torch", **fp8.scales())
    out = decode_attention_triton(*fp8.decode_args(), **launch, **fp8.scales())
    assert relative_error(out, ref) < (1e-5 if dtype == torch.float32 else 2e-3)


@interpreter_only
@pytest.mark.parametrize(("block_size", "gqa", "head_dim", "dtype", "launch"), INTERP_FP8)
def test_interpreter_fp8_extend_matches_reference(block_size, gqa, head_dim, dtype, launch):
    from yaie.kernels.attention.triton_extend import extend_attention_triton

    kv_heads = 2 if gqa < 8 else 1
    prefix, new = random_ragged_lengths(block_size * gqa, batch=3, max_prefix=60, max_new=24)
    batch = make_paged_batch(prefix, new, block_size, kv_heads, kv_heads * gqa, head_dim)
    fp8 = replace(batch.to_fp8(), q=batch.q.to(dtype))
    ref = extend_attention(*fp8.extend_args(), backend="torch", **fp8.scales())
    tiles = {"block_m": 32, "block_n": launch["block_n"], "num_warps": 4}
    out = extend_attention_triton(*fp8.extend_args(), **tiles, **fp8.scales())
    assert relative_error(out, ref) < (1e-5 if dtype == torch.float32 else 2e-3)


@interpreter_only
@pytest.mark.parametrize("mode", [1, 2, 3])
def test_interpreter_fp8_extend_in_each_math_mode_matches_reference(mode, monkeypatch):
    """fp16 queries in each of extend's fp8 math modes (triton_common.FP8_EXTEND_MATH): K/V in
    q's dtype with the scales on scores and probabilities (1, 2: fp16 dots), or the K/V tiles
    scaled as they load (3)."""
    import yaie.kernels.attention.triton_common as triton_common
    from yaie.kernels.attention.triton_extend import extend_attention_triton

    monkeypatch.setattr(triton_common, "FP8_EXTEND_MATH", mode)
    batch = make_paged_batch([37, 0], [9, 20], 16, 2, 4, 64)
    fp8 = replace(batch.to_fp8(), q=batch.q.to(torch.float16))
    ref = extend_attention(*fp8.extend_args(), backend="torch", **fp8.scales())
    tiles = {"block_m": 32, "block_n": 16, "num_warps": 4}
    out = extend_attention_triton(*fp8.extend_args(), **tiles, **fp8.scales())
    assert relative_error(out, ref) < 2e-3


@interpreter_only
def test_interpreter_fp8_grouped_decode_matches_reference():
    """Two rows sharing their first 2 blocks (one group) and a lone row, over an fp8 pool."""
    from yaie.kernels.attention.triton_cascade import decode_attention_grouped_triton

    batch = make_paged_batch([40, 0, 25], [1, 1, 1], 16, 2, 8, 64)
    batch.block_tables[1] = batch.block_tables[0]  # row 1 shares row 0's blocks...
    batch.seq_lens[1] = 37  # ...and stops inside them: prefix 32 (2 blocks) + 5 own tokens
    fp8 = batch.to_fp8()
    groups = PrefixGroups(
        rows=torch.tensor([0, 1], dtype=torch.int32),
        starts=torch.tensor([0, 2], dtype=torch.int32),
        prefix_lens=torch.tensor([32], dtype=torch.int32),
        kv_start=torch.tensor([32, 32, 0], dtype=torch.int32),
    )
    ref = decode_attention(*fp8.decode_args(), backend="torch", **fp8.scales())
    for merge in (False, True):  # the reduce pass, or the prefix folded in by the split kernel
        kw = dict(num_splits=1, merge=merge, **fp8.scales())
        out = decode_attention_grouped_triton(*fp8.decode_args(), groups, **kw)
        assert relative_error(out, ref) < 1e-5
    grouped = decode_attention_grouped(*fp8.decode_args(), groups, backend="triton", **fp8.scales())
    assert relative_error(grouped, ref) < 1e-5


@interpreter_only
def test_interpreter_kernels_read_a_pool_narrower_than_q():
    """An fp16 pool under fp32 queries: decode and extend convert on load."""
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    batch = make_paged_batch([30, 7], [1, 1], 16, 2, 4, 64)
    narrow = replace(batch, k_cache=batch.k_cache.half(), v_cache=batch.v_cache.half())
    ref = decode_attention(*narrow.decode_args(), backend="torch")
    assert relative_error(decode_attention_triton(*narrow.decode_args(), num_splits=2), ref) < 1e-5


@gpu_only
def test_gpu_fp8_kernels_with_bf16_queries_match_the_fp32_reference():
    """Store (bytes as quantize_fp8's, bar rounding of the division), decode, extend and grouped
    decode over an fp8 pool with bf16 queries, within 1% of the reference in fp32."""
    from yaie.kernels.attention.triton_cascade import decode_attention_grouped_triton

    k = torch.randn(300, 8, 128, device="cuda", dtype=torch.bfloat16)
    pools = [torch.zeros(32, 16, 8, 128, dtype=FP8_DTYPE, device="cuda") for _ in range(4)]
    scales = [torch.zeros(32, 8, 16, device="cuda") for _ in range(4)]
    slots = torch.randperm(512, device="cuda")[:300]
    store_kv(pools[0], pools[1], k, k, slots, "triton", scales[0], scales[1])
    store_kv(pools[2], pools[3], k, k, slots, "torch", scales[2], scales[3])
    same = (pools[0].view(torch.uint8) == pools[2].view(torch.uint8)).float().mean()
    assert same > 0.999 and torch.allclose(scales[0], scales[2], rtol=1e-6)
    prefix, new = random_ragged_lengths(5, batch=8, max_prefix=3000, max_new=300)
    batch = make_paged_batch(prefix, new, 16, 8, 32, 128, torch.float32, "cuda")
    pooled = batch.to_fp8()
    ref = extend_attention(*pooled.extend_args(), backend="torch", **pooled.scales())
    fp8 = replace(pooled, q=batch.q.bfloat16())
    assert relative_error(extend_attention(*fp8.extend_args(), **fp8.scales()), ref) < 1e-2
    decode = make_paged_batch(prefix, [1] * 8, 16, 8, 32, 128, torch.float32, "cuda").to_fp8()
    ref = decode_attention(*decode.decode_args(), backend="torch", **decode.scales())
    fp8 = replace(decode, q=decode.q.bfloat16())
    assert relative_error(decode_attention(*fp8.decode_args(), **fp8.scales()), ref) < 1e-2
    shared = make_paged_batch([3000] * 4, [1] * 4, 16, 8, 32, 128, torch.float32, "cuda")
    shared.block_tables[:, :64] = shared.block_tables[0, :64]  # 1024 tokens shared by all 4
    shared = shared.to_fp8()
    ref = decode_attention(*shared.decode_args(), backend="torch", **shared.scales())
    groups = PrefixGroups.from_lists([[0, 1, 2, 3]], [1024], 4, "cuda")
    fp8 = replace(shared, q=shared.q.bfloat16())
    grouped = decode_attention_grouped_triton(*fp8.decode_args(), groups, **fp8.scales())
    assert relative_error(grouped, ref) < 1e-2

"""The skinny Triton matmul (kernels/linear/triton_skinny.py) against torch's, and the dispatch
in kernels/linear: interpreter cases (fp32, fp16) in a child process with TRITON_INTERPRET=1,
CUDA cases (bf16, fp16) where there is a GPU (tests/kernels/triton_modes.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.triton_modes import INTERPRET, gpu_only
from yaie.kernels.batch_invariant import batch_invariant_mode
from yaie.kernels.elementwise.reference import silu_and_mul_reference
from yaie.kernels.linear import linear, silu_gated_linear, skinny_applies

EXPECTED_CHILD_TESTS = 18
if INTERPRET:
    CASES = [("cpu", torch.float32), ("cpu", torch.float16)]
elif torch.cuda.is_available():
    CASES = [("cuda", torch.bfloat16), ("cuda", torch.float16)]
else:
    CASES = []
kernel_cases = pytest.mark.parametrize(("device", "dtype"), CASES)
# (N, K): column counts that leave a partial column tile, K a partial K tile, one below a tile
SHAPES = [(80, 96), (48, 300), (130, 16)]


def test_skinny_kernel_matches_torch_under_triton_interpreter(interpreter_child) -> None:
    interpreter_child(__file__, EXPECTED_CHILD_TESTS)


def _inputs(m, n, k, dtype, device, seed, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(dtype).to(device)
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype).to(device)
    b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
    return x, w, b


def _expected(x, w, b):
    """F.linear in fp32 over the same inputs, rounded once to their dtype (what any fp32-
    accumulating GEMM gives up to the order of its sum)."""
    bias = None if b is None else b.float()
    return F.linear(x.float(), w.float(), bias).to(x.dtype)


def _close(actual, expected):
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol)


@kernel_cases
@pytest.mark.parametrize("m", [1, 5, 17, 64])
def test_rows_match_torch(device, dtype, m) -> None:
    from yaie.kernels.linear.triton_skinny import skinny_linear_triton

    for i, (n, k) in enumerate(SHAPES):
        x, w, b = _inputs(m, n, k, dtype, device, seed=m * 10 + i, bias=i != 1)
        _close(skinny_linear_triton(x, w, b), _expected(x, w, b))


@kernel_cases
@pytest.mark.parametrize("m", [1, 33])
def test_gated_matches_linear_then_silu_and_mul(device, dtype, m) -> None:
    from yaie.kernels.linear.triton_skinny import skinny_linear_triton

    x, w, b = _inputs(m, 2 * 72, 200, dtype, device, seed=m)
    x = x * 3  # gates over the whole range of silu
    for bias in (None, b):
        expected = silu_and_mul_reference(_expected(x, w, bias))
        _close(skinny_linear_triton(x, w, bias, gated=True), expected)


@kernel_cases
def test_a_row_slice_and_an_explicit_config(device, dtype) -> None:
    """x a strided view (a graph bucket's rows); a config of other tiles gives the same."""
    from yaie.kernels.linear.triton_skinny import skinny_linear_triton

    x, w, b = _inputs(9, 96, 160, dtype, device, seed=3)
    wide = torch.zeros(9, 400, dtype=dtype, device=device)
    wide[:, 100:260] = x
    view = wide[:, 100:260]
    expected = _expected(x, w, b)
    _close(skinny_linear_triton(view, w, b), expected)
    _close(skinny_linear_triton(x, w, b, config=(64, 32, 2, 2)), expected)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "message"),
    [((65, 8), (4, 8), "at most 64 rows"), ((2, 8), (4, 9), "expected"), ((2, 8), (3, 8), "2I")],
)
def test_bad_shapes_are_rejected(x_shape, w_shape, message) -> None:
    from yaie.kernels.linear.triton_skinny import skinny_linear_triton

    with pytest.raises(ValueError, match=message):
        skinny_linear_triton(torch.ones(x_shape), torch.ones(w_shape), gated=message == "2I")


def test_the_cpu_keeps_torch() -> None:
    """On the CPU (and for fp32) linear and silu_gated_linear are F.linear's results exactly."""
    x, w, b = _inputs(3, 32, 24, torch.float32, "cpu", seed=1)
    assert not skinny_applies(x)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    w2 = torch.cat([w, w.flip(0)])
    b2 = torch.cat([b, b])
    assert torch.equal(silu_gated_linear(x, w2, b2), silu_and_mul_reference(F.linear(x, w2, b2)))


@kernel_cases
@pytest.mark.parametrize(("n", "gated"), [(2100, False), (4100, False), (4100, True)])
def test_the_default_configs_of_wide_layers(device, dtype, n, gated) -> None:
    """default_config's wider column tiles (32 and 64, K tiles 512 / 256 / 128), partial."""
    from yaie.kernels.linear.triton_skinny import default_config, skinny_linear_triton

    assert default_config(n, 600, gated)[0] == (32 if n < 4096 else 64)
    x, w, b = _inputs(3, 2 * n if gated else n, 600, dtype, device, seed=n)
    expected = _expected(x, w, b)
    _close(
        skinny_linear_triton(x, w, b, gated),
        silu_and_mul_reference(expected) if gated else expected,
    )


@gpu_only
def test_dispatch_on_cuda() -> None:
    """Decode-sized bf16 rows over K >= 2,048 take the kernel; more rows, a short K, fp32, and
    batch-invariant mode keep F.linear (a kernel chosen by row count would make results depend
    on the batch)."""
    x, w, b = _inputs(16, 256, 2048, torch.bfloat16, "cuda", seed=2)
    assert skinny_applies(x) and not skinny_applies(torch.cat([x, x[:1]]))
    assert not skinny_applies(x[:, :1024])
    assert not skinny_applies(x.float())
    with batch_invariant_mode():
        assert not skinny_applies(x)
    _close(linear(x, w, b), _expected(x, w, b))
    _close(linear(torch.cat([x, x]), w, b), _expected(torch.cat([x, x]), w, b))

"""The batch-invariant Triton path: the fixed-tile matmul (rows independent of M, close to
torch), decode attention at the mode's fixed split count (a request's output independent of the
batch), and extend attention (each query's output independent of its chunk). Interpreter cases
(fp32) run in a child process with TRITON_INTERPRET=1; CUDA cases (bf16, fp32) where there is a
GPU (see tests/kernels/triton_modes.py)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.batch_invariant.invariance_cases import (
    check_attention_chunks,
    check_decode_batches,
    check_linear_rows,
)
from tests.kernels.triton_modes import INTERPRET

EXPECTED_CHILD_TESTS = 3
if INTERPRET:
    CASES = [("cpu", torch.float32)]
elif torch.cuda.is_available():
    CASES = [("cuda", torch.bfloat16), ("cuda", torch.float32)]
else:
    CASES = []
kernel_cases = pytest.mark.parametrize(("device", "dtype"), CASES)


@pytest.fixture(autouse=True)
def _row_independent_interpreter_dot(monkeypatch):
    """Under the interpreter, tl.dot is numpy's matmul of the whole tile, and OpenBLAS's sgemm
    (its Haswell and Zen kernels; not its SkylakeX one) rounds a row differently by where the
    row sits in the tile: the very dependence on the batch these tests look for in our kernels,
    which the GPU's MMA does not have. The child computes each row of a tile's dot alone, as
    the same gemv, so what is checked is our kernels' tiling and reduction order."""
    if not INTERPRET:
        return
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    tile_dot = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.data.ndim != 2 or a.dtype.primitive_bitwidth == 8:
            return tile_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        rows = [np.matmul(row, b.data, dtype=d.data.dtype) for row in a.data]
        return interpreter.TensorHandle(np.stack(rows) + d.data, d.dtype.scalar)

    monkeypatch.setattr(builder, "create_dot", create_dot)


def test_kernels_are_invariant_under_triton_interpreter(interpreter_child) -> None:
    interpreter_child(__file__, EXPECTED_CHILD_TESTS)


@kernel_cases
def test_matmul_rows_do_not_depend_on_the_batch(device, dtype) -> None:
    from yaie.kernels.batch_invariant.triton_matmul import matmul_triton

    check_linear_rows(matmul_triton, device, dtype, 160, 200)


@kernel_cases
def test_decode_at_the_fixed_split_count_is_batch_invariant(device, dtype) -> None:
    from yaie.kernels.attention.triton_decode import decode_attention_triton
    from yaie.kernels.batch_invariant import INVARIANT_DECODE_SPLITS

    def decode(q, k_cache, v_cache, tables, lens, scale):
        return decode_attention_triton(
            q, k_cache, v_cache, tables, lens, scale, num_splits=INVARIANT_DECODE_SPLITS
        )

    check_decode_batches(decode, device, dtype, (2, 9) if INTERPRET else (2, 8, 41))


def _extend_invariant(*args, **kwargs):
    from yaie.kernels.attention.triton_extend import extend_attention_triton

    return extend_attention_triton(*args, invariant=True, **kwargs)


@kernel_cases
def test_extend_is_chunk_invariant(device, dtype) -> None:
    check_attention_chunks(_extend_invariant, device, dtype)


@pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_extend_is_chunk_invariant_at_a_real_shape(dtype) -> None:
    # Qwen3-0.6B's heads; chunks that start past whole 32-key tiles and cross 128-query tiles, as
    # a chunked prefill (or a prompt after a cached prefix) does.
    chunks = ((0, 7), (35, 42), (48, 53), (100, 229), (130, 300), (299, 300))
    check_attention_chunks(_extend_invariant, "cuda", dtype, 300, (8, 16, 128), chunks)

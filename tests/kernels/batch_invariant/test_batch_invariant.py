"""The batch-invariant ops on the CPU (kernels/batch_invariant): linear layers in fixed-row
chunks, and attention over key blocks aligned to absolute positions (equal to the reference to
rounding, the same bit for bit across batches, chunkings, and extend vs decode)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.kernels.attention.paged_batch import make_paged_batch, relative_error
from tests.kernels.batch_invariant.invariance_cases import (
    check_attention_chunks,
    check_decode_batches,
    check_linear_rows,
)
from yaie.kernels.attention.reference import (
    decode_attention_reference,
    extend_attention_reference,
)
from yaie.kernels.batch_invariant import batch_invariant_mode, is_active
from yaie.kernels.batch_invariant.attention import (
    decode_attention_invariant,
    extend_attention_invariant,
)
from yaie.kernels.batch_invariant.matmul import linear_invariant


def _extend(q, k_cache, v_cache, tables, lens, starts, max_len, scale):
    return extend_attention_invariant(q, k_cache, v_cache, tables, lens, starts, scale)


def test_torch_cpu_matmul_does_vary_with_the_number_of_rows() -> None:
    """Why the mode exists on the CPU: one row alone (a GEMV) and the same row among others
    (a GEMM) round differently."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 128, generator=gen), torch.randn(256, 128, generator=gen)
    assert not torch.equal(F.linear(x[:1], w), F.linear(x, w)[:1])


def test_linear_rows_do_not_depend_on_the_batch() -> None:
    check_linear_rows(linear_invariant, "cpu", torch.float32, 96, 200)


def test_mode_routes_linear_layers_and_is_thread_local() -> None:
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(9, 64)
    with batch_invariant_mode():
        assert is_active()
        inside = layer(x)
    assert not is_active()
    assert torch.equal(inside, linear_invariant(x, layer.weight, layer.bias))
    with batch_invariant_mode(False):
        assert not is_active()


def test_attention_matches_the_reference() -> None:
    batch = make_paged_batch([0, 9, 40, 3], [12, 1, 7, 30], 4, 2, 4, 16, seed=5)
    ref = extend_attention_reference(
        batch.q, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens,
        batch.query_start, batch.scale,
    )  # fmt: skip
    out = _extend(*batch.extend_args())
    assert relative_error(out, ref) < 1e-5
    d = make_paged_batch([7, 0, 70], [1, 1, 1], 4, 2, 4, 16, seed=6)
    ref = decode_attention_reference(*d.decode_args())
    assert relative_error(decode_attention_invariant(*d.decode_args()), ref) < 1e-5


def test_attention_is_chunk_and_batch_invariant() -> None:
    check_attention_chunks(_extend, "cpu", torch.float32)
    check_decode_batches(decode_attention_invariant, "cpu", torch.float32)


def test_extend_and_decode_agree_for_the_same_query() -> None:
    """On the CPU both are one function: a prompt's last token run alone (decode) or as part
    of a chunk (extend) gives the same bits."""
    batch = make_paged_batch([20], [1], 4, 2, 4, 16, seed=7)
    extend = _extend(*batch.extend_args())
    decode = decode_attention_invariant(*batch.decode_args())
    assert torch.equal(extend, decode)

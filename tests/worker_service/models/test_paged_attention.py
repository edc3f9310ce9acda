"""paged_attention on a mixed batch whose one-token rows share cached prefixes: the grouped
(cascade) decode of those rows plus extend attention of the rest equals the plain kernels and
the torch reference (Triton under the interpreter, in a child pytest; see tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.attention.paged_batch import relative_error
from tests.kernels.attention.test_attention_cascade import make_grouped_batch
from tests.kernels.triton_modes import interpreter_only
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.models.paged_attention import paged_attention

EXPECTED_CHILD_TESTS = 2
BLOCK_SIZE = 16


def mixed_batch(dtype: torch.dtype, extend_tokens: int, extend_len: int, seed: int):
    """Single rows in groups (make_grouped_batch) first, then one request running its last
    extend_tokens of extend_len tokens over blocks of its own. -> (q, k_cache, v_cache, batch)."""
    grouped = make_grouped_batch([3, 5], 2, BLOCK_SIZE, (2, 2, 32), dtype, (2, 4), (1, 20), seed)
    q1, k1, v1, tables1, lens1, _ = grouped.args
    gen = torch.Generator().manual_seed(seed + 1)
    own = -(-extend_len // BLOCK_SIZE)
    extra = [torch.randn((own, *k1.shape[1:]), generator=gen).to(dtype) for _ in range(2)]
    k_cache, v_cache = torch.cat([k1, extra[0]]), torch.cat([v1, extra[1]])
    width = max(tables1.shape[1], own)
    tables = torch.zeros(tables1.shape[0] + 1, width, dtype=torch.int32)
    tables[:-1, : tables1.shape[1]] = tables1
    tables[-1, :own] = torch.arange(k1.shape[0], k1.shape[0] + own, dtype=torch.int32)
    d = q1.shape[0]
    q_ext = torch.randn((extend_tokens, *q1.shape[1:]), generator=gen).to(dtype)
    query_start = list(range(d + 1)) + [d + extend_tokens]
    batch = ForwardBatch(
        input_ids=torch.zeros(d + extend_tokens, dtype=torch.int64),
        positions=torch.zeros(d + extend_tokens, dtype=torch.int64),
        slots=torch.zeros(d + extend_tokens, dtype=torch.int64),
        block_tables=tables,
        seq_lens=torch.cat([lens1, torch.tensor([extend_len], dtype=torch.int32)]),
        query_start=torch.tensor(query_start, dtype=torch.int32),
        max_query_len=extend_tokens,
        is_decode=False,
        logits_indices=torch.arange(d + 1),
        num_single=d,
        extend_query_start=torch.tensor([0, extend_tokens], dtype=torch.int32),
        prefix_groups=grouped.groups,
    )
    return torch.cat([q1, q_ext]), k_cache, v_cache, batch


def _attend(q, k_cache, v_cache, batch: ForwardBatch, backend: str, groups: bool):
    from dataclasses import replace

    if not groups:
        batch = replace(batch, prefix_groups=None)
    out = torch.full_like(q, float("nan"))  # every row must be written
    scale = q.shape[-1] ** -0.5
    return paged_attention(q, batch, k_cache, v_cache, scale, backend, out=out)


@interpreter_only
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 3e-3)], ids=["fp32", "fp16"]
)
def test_interpreter_mixed_batch_groups_its_decode_rows(dtype: torch.dtype, tol: float) -> None:
    q, k_cache, v_cache, batch = mixed_batch(dtype, extend_tokens=7, extend_len=40, seed=5)
    reference = _attend(q.float(), k_cache.float(), v_cache.float(), batch, "torch", False)
    grouped = _attend(q, k_cache, v_cache, batch, "triton", True)
    plain = _attend(q, k_cache, v_cache, batch, "triton", False)
    assert relative_error(grouped, reference) < tol
    assert relative_error(plain, reference) < tol
    d = batch.num_single
    assert relative_error(grouped[:d], plain[:d]) < tol
    assert torch.equal(grouped[d:], plain[d:])  # the extend rows take the same kernel


def test_mixed_batch_grouping_matches_the_reference_under_triton_interpreter(
    interpreter_child,
) -> None:
    """The interpreter cases of this file all pass in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS, select="interpreter")

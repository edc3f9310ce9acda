"""Piecewise prefill graphs (worker_service/step/prefill_graphs.py): the token buckets; on the
CPU, the contract the graphs rely on (a forward over a bucket's padded rows, attention between
the pieces on the batch's own rows, gives the unpadded logits); on the GPU, the captured graphs
against the eager runner for prefill, mixed and oversized steps."""

from __future__ import annotations

import pytest
import torch

from tests.worker_service.conftest import build_forward_batch, kv_pool_for
from tests.worker_service.driver import hf_greedy, load_hf_model, sampling
from tests.worker_service.step.test_runner import (
    BLOCK_SIZE,
    NUM_BLOCKS,
    _mixed_step_results,
    generate,
)
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.prefill_graphs import PrefillGraphs, prefill_graph_sizes
from yaie.worker_service.step.runner import ModelRunner


def graph_and_eager_runners(
    model_dir, dtype: torch.dtype, prefill_tokens: int, mixed_tokens: int
) -> tuple[ModelRunner, ModelRunner]:
    """Two CUDA runners over one Triton model: one with graphs (decode graphs to 16 rows, the
    given prefill and mixed-step limits), one eager."""
    device = torch.device("cuda")
    model = load_model(str(model_dir), device, dtype, attention_backend="triton")

    def make_runner(graphs: bool) -> ModelRunner:
        pool = kv_pool_for(model, BLOCK_SIZE, NUM_BLOCKS, device)
        return ModelRunner(
            model,
            pool,
            graphs,
            max_graph_batch_size=16,
            max_prefill_graph_tokens=prefill_tokens,
            max_mixed_graph_tokens=mixed_tokens,
        )

    return make_runner(True), make_runner(False)


def recorded_runs(monkeypatch, graphs_class) -> list[ForwardBatch]:
    """The batches graphs_class.run is called with from now on (patched on the class: an
    instance attribute would make a reference cycle, whose CUDA graphs the collector may then
    free in the middle of a later capture)."""
    runs: list[ForwardBatch] = []
    original = graphs_class.run
    monkeypatch.setattr(
        graphs_class, "run", lambda self, batch: runs.append(batch) or original(self, batch)
    )
    return runs


def assert_transformers_greedy(runner: ModelRunner, model_dir, params, prompts) -> None:
    hf = load_hf_model(model_dir)
    assert generate(runner, params, max_new=12, prompts=prompts) == [
        hf_greedy(hf, p, 12) for p in prompts
    ]


def assert_mixed_step_as_alone(runner: ModelRunner, eager: ModelRunner, dtype) -> None:
    """A mixed step (two decodes, two prefills) on runner gives eager's tokens and logprobs of
    the same entries run alone."""
    together = _mixed_step_results(runner, True)
    alone = _mixed_step_results(eager, False)
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    for rid in together:
        assert together[rid][0] == alone[rid][0]
        assert together[rid][1] == pytest.approx(alone[rid][1], abs=tol)


def test_prefill_graph_sizes_pad_by_under_an_eighth_and_reach_the_maximum():
    for top in (16, 100, 2048, 4096, 8192):
        sizes = prefill_graph_sizes(top)
        assert sizes[0] == 16 and sizes[-1] >= top and sizes[-1] - top < 16
        assert all(s % 16 == 0 for s in sizes) and sizes == sorted(set(sizes))
        for small, big in zip(sizes, sizes[1:], strict=False):
            assert big - small <= max(16, small // 8)  # small + 1 tokens pad by < 1/8


def _padded_logits(model, batch: ForwardBatch, kv_cache, bucket: int) -> torch.Tensor:
    """What PrefillGraphs.run computes, without graphs: the forward over bucket rows (padding:
    token 0 at position 0, K/V into a scratch slot), attention on the batch's rows only into an
    output buffer whose other rows hold junk, logits of the sampled rows."""
    t = batch.input_ids.shape[0]
    scratch_slot = (kv_cache.shape[2] - 1) * kv_cache.shape[3]

    def pad(x: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([x, torch.full((bucket - t,), value, dtype=x.dtype)])

    static = ForwardBatch(
        pad(batch.input_ids, 0),
        pad(batch.positions, 0),
        pad(batch.slots, scratch_slot),
        batch.block_tables,
        batch.seq_lens,
        batch.query_start,
        batch.max_query_len,
        batch.is_decode,
        batch.logits_indices,
    )
    junk = torch.Generator().manual_seed(0)

    def split(q: torch.Tensor, attend) -> torch.Tensor:
        assert q.shape[0] == bucket
        out = torch.randn(q.shape, generator=junk) * 1e3  # stale rows of an earlier step
        attend(q[:t].clone(), batch, out=out[:t])
        return out

    static.split_at_attention = split
    h, residual = model.hidden_states(static, kv_cache)
    return model.logits(h, residual, batch.logits_indices)


def test_a_bucket_padded_forward_gives_the_unpadded_logits(tiny_model_dir):
    """Prefill of two requests (one over a cached prefix), then a decode step, each padded to
    the next bucket: the same logits as the plain forward (fp32, torch kernels)."""
    model = load_model(str(tiny_model_dir("Qwen3ForCausalLM", head_dim=32)), "cpu", torch.float32)
    tables = [[0, 1, 2], [3, 4, 5]]
    steps = [
        ([[5, 9, 200, 31, 77], list(range(40, 63))], [0, 0]),
        ([[3, 8], [4]], [5, 23]),  # two tokens after 5, one after 23: extend over the cache
        ([[11], [12]], [7, 24]),  # decode
    ]
    caches = [torch.zeros(2, 2, 8, 16, 2, 32) for _ in range(2)]  # block 7: the scratch block
    with torch.inference_mode():
        for new_tokens, cached in steps:
            batch = build_forward_batch(new_tokens, cached, tables, 16)
            bucket = next(s for s in prefill_graph_sizes(64) if s > batch.input_ids.shape[0])
            plain = model(batch, caches[0])
            padded = _padded_logits(model, batch, caches[1], bucket)
            torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
    # the real rows' K/V are the same in both pools (the padding wrote only the scratch block)
    torch.testing.assert_close(caches[1][:, :, :7], caches[0][:, :, :7], atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_graphs_equal_eager_steps(tiny_model_dir, dtype, monkeypatch):
    """On the GPU: prefills, decode batches over the decode graphs' largest, a mixed step and a
    prompt longer than the largest bucket through a runner with prefill graphs give the eager
    runner's tokens (fp32: transformers' greedy tokens too); the graphs ran for the steps they
    could hold."""
    model_dir = tiny_model_dir("LlamaForCausalLM")
    # no whole-step graphs: every small step takes the pieces
    graph_runner, eager_runner = graph_and_eager_runners(model_dir, dtype, 128, 0)
    assert graph_runner.prefill_graphs is not None and eager_runner.prefill_graphs is None
    runs = recorded_runs(monkeypatch, PrefillGraphs)
    params = sampling(return_logprobs=True, top_logprobs=2)
    prompts = [[3 + (7 * i + 5 * j) % 600 for j in range(2 + 9 * i)] for i in range(6)]
    groups = [
        prompts[:3],  # a 33-token prefill (the 48 bucket), then decode graphs
        prompts[3:],  # 114 tokens: the 128 bucket
        [[(5 * i + j) % 300 + 1 for j in range(3)] for i in range(20)],  # decodes of 20 > 16 rows
        [[(11 * j) % 500 + 1 for j in range(150)]],  # 150 tokens > 128: eager
    ]
    for group in groups:
        graph_tokens = generate(graph_runner, params, max_new=12, prompts=group)
        assert graph_tokens == generate(eager_runner, params, max_new=12, prompts=group)
    sizes = sorted({b.input_ids.shape[0] for b in runs})
    assert 33 in sizes and 114 in sizes and 60 in sizes and 20 in sizes and max(sizes) <= 128
    if dtype == torch.float32:
        assert_transformers_greedy(graph_runner, model_dir, params, prompts[:3])
    runs.clear()
    assert_mixed_step_as_alone(graph_runner, eager_runner, dtype)
    assert runs

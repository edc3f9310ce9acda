"""Whole-forward graphs of small prefill and mixed steps (worker_service/step/mixed_graphs.py): on
the CPU, the contract the graphs rely on (a step moved into a bucket's fixed layout, padding rows
and empty request slots included, gives the step's own logits and K/V); on the GPU, the captured
graphs against the eager runner."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.worker_service.conftest import build_forward_batch, kv_pool_for
from tests.worker_service.driver import sampling
from tests.worker_service.step.test_prefill_graphs import (
    assert_mixed_step_as_alone,
    assert_transformers_greedy,
    graph_and_eager_runners,
    recorded_runs,
)
from tests.worker_service.step.test_runner import (
    generate,
)
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.mixed_graphs import DECODE_SLOTS, EXTEND_SLOTS, MixedGraphs


def _singles_first(batch: ForwardBatch, sampled: list[int] | None = None) -> ForwardBatch:
    """batch as the runner's batch builder makes it: its leading one-token requests marked
    (num_single, extend_query_start); only the requests in sampled (all: None) sample."""
    lengths = (batch.query_start[1:] - batch.query_start[:-1]).tolist()
    d = 0
    while d < len(lengths) and lengths[d] == 1:
        d += 1
    if sampled is not None:
        ends = batch.query_start[1:].long() - 1
        batch = replace(batch, logits_indices=ends[sampled])
    if batch.is_decode or d == 0:
        return batch
    return replace(batch, num_single=d, extend_query_start=(batch.query_start[d:] - d).int())


def test_a_step_in_the_bucket_layout_gives_its_own_logits_and_kv(tiny_model_dir):
    """Prefills, then mixed steps (one-token requests first, a request over a cached prefix, a
    request that does not sample), each moved into the bucket layout with padding decode rows,
    padding token rows and empty extend slots: the plain forward's logits and K/V (fp32, torch
    kernels)."""
    model = load_model(str(tiny_model_dir("Qwen3ForCausalLM", head_dim=32)), "cpu", torch.float32)
    plain_pool = kv_pool_for(model, 16, 24)
    static_pool = kv_pool_for(model, 16, 24)
    graphs = MixedGraphs(model, static_pool, max_tokens=64, max_blocks_per_seq=4)
    tables = [[0, 1], [2, 3], [4, 5, 6], [7, 8]]
    steps = [
        ([[5, 9, 200, 31, 77], list(range(40, 63))], [0, 0], [0, 1], None),
        # requests 0 and 1 decode; 2 prefills 7 tokens; 3 prefills 20 but does not sample
        ([[11], [12], list(range(100, 107)), list(range(300, 320))], [5, 23, 0, 0], [0, 1, 2, 3],
         [0, 1, 2]),
        # three decodes, then request 3's next 9 tokens over its 20 cached ones
        ([[13], [14], [15], list(range(400, 409))], [6, 24, 7, 20], [0, 1, 2, 3], None),
    ]  # fmt: skip
    with torch.inference_mode():
        for new_tokens, cached, rows, sampled in steps:
            batch = build_forward_batch(new_tokens, cached, [tables[r] for r in rows], 16)
            batch = _singles_first(batch, sampled)
            size = graphs.bucket(batch)
            assert size is not None and size >= batch.input_ids.shape[0] - batch.num_single
            plain = model.forward(batch, plain_pool.cache)
            graphs.load(batch, size)
            static = model.forward(graphs.static_batch(size), static_pool.cache)
            assert static.shape[0] == DECODE_SLOTS + EXTEND_SLOTS
            n = batch.logits_indices.shape[0]
            torch.testing.assert_close(static[:n], plain, atol=1e-5, rtol=1e-5)
    scratch = static_pool.scratch_block  # padding rows wrote only the scratch block
    torch.testing.assert_close(
        static_pool.cache[:, :, :scratch], plain_pool.cache[:, :, :scratch], atol=1e-5, rtol=1e-5
    )


def test_steps_that_do_not_fit_the_layout_are_left_to_the_other_paths(tiny_model_dir):
    model = load_model(str(tiny_model_dir("Qwen3ForCausalLM", head_dim=32)), "cpu", torch.float32)
    graphs = MixedGraphs(model, kv_pool_for(model, 16, 64), max_tokens=48, max_blocks_per_seq=4)
    table = [[0, 1, 2, 3]]

    def batch_of(new_tokens: list[list[int]], cached: list[int]) -> ForwardBatch:
        return _singles_first(build_forward_batch(new_tokens, cached, table * len(cached), 16))

    assert graphs.bucket(batch_of([[1] * 40], [0])) == 48
    assert graphs.bucket(batch_of([[1] * 49], [0])) is None  # more tokens than the largest
    assert graphs.bucket(batch_of([[1], [2]], [3, 4])) is None  # decode: the decode graphs'
    singles = [[1]] * (DECODE_SLOTS + 1) + [[1, 2]]
    assert graphs.bucket(batch_of(singles, [3] * (DECODE_SLOTS + 2))) is None
    prefills = [[1, 2]] * (EXTEND_SLOTS + 1)
    assert graphs.bucket(batch_of(prefills, [0] * (EXTEND_SLOTS + 1))) is None
    wide = build_forward_batch([[1, 2]], [70], [[0, 1, 2, 3, 4]], 16)  # 5 blocks > 4
    assert graphs.bucket(wide) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_graphs_equal_eager_steps(tiny_model_dir, dtype, monkeypatch):
    """On the GPU: prefills (one request and several), a mixed step of two decodes and two
    prefills, and prompts past the largest bucket through a runner with mixed graphs give the
    eager runner's tokens and log-probabilities (fp32: transformers' greedy tokens too); the
    graphs ran for the steps they could hold."""
    model_dir = tiny_model_dir("LlamaForCausalLM")
    graph_runner, eager_runner = graph_and_eager_runners(model_dir, dtype, 256, 128)
    assert graph_runner.mixed_graphs is not None and eager_runner.mixed_graphs is None
    runs = recorded_runs(monkeypatch, MixedGraphs)
    params = sampling(return_logprobs=True, top_logprobs=2)
    prompts = [[3 + (7 * i + 5 * j) % 600 for j in range(2 + 9 * i)] for i in range(6)]
    groups = [
        prompts[:1],  # one 2-token prompt
        prompts[:3],  # 33 tokens of three requests
        prompts[3:],  # 114 tokens
        [[(11 * j) % 500 + 1 for j in range(150)]],  # 150 tokens > 128: the piecewise graphs
    ]
    for group in groups:
        graph_tokens = generate(graph_runner, params, max_new=12, prompts=group)
        assert graph_tokens == generate(eager_runner, params, max_new=12, prompts=group)
    sizes = sorted({b.input_ids.shape[0] for b in runs})
    assert sizes == [2, 33, 114]
    if dtype == torch.float32:
        assert_transformers_greedy(graph_runner, model_dir, params, prompts[:3])
    runs.clear()
    assert_mixed_step_as_alone(graph_runner, eager_runner, dtype)
    assert [b.num_single for b in runs] == [0, 2]  # the prefill, then the mixed step

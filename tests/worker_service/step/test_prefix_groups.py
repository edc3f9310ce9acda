"""find_prefix_groups: rows that share leading blocks form groups whose prefix every row holds,
short of each row's current block; too little sharing gives no groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.worker_service.conftest import kv_pool_for
from tests.worker_service.driver import sampling
from tests.worker_service.step.test_runner import LocalStream
from yaie.worker.v1 import worker_pb2
from yaie.worker_service.loader import load_model
from yaie.worker_service.step import batch_builder
from yaie.worker_service.step.cuda_graphs import DecodeGraphs
from yaie.worker_service.step.prefix_groups import find_prefix_groups
from yaie.worker_service.step.runner import ModelRunner
from yaie.worker_service.step.warmup import warm_up


@pytest.fixture(scope="module")
def model_runner(tiny_model_dir):
    """ModelRunner(cascade=...) over one tiny model on the CPU (block size 4)."""
    model = load_model(str(tiny_model_dir("LlamaForCausalLM")), "cpu", torch.float32)

    def make(cascade: bool) -> ModelRunner:
        return ModelRunner(model, kv_pool_for(model, 4, 64), cascade=cascade)

    return make


def _tables(rows: list[list[int]]) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int32)


def test_rows_sharing_leading_blocks_group_and_the_prefix_is_what_all_share():
    tables = _tables(
        [
            [1, 2, 3, 4, 50],  # group A: shares 1, 2, 3 with the two below
            [1, 2, 3, 60],
            [9, 8, 70, 71],  # group B
            [1, 2, 3, 4, 5, 80],
            [9, 8, 90],
            [7, 100],  # alone
            [1, 200],  # shares only block 1 with group A: left out at min_blocks 2
        ]
    )
    seq_lens = [65, 60, 50, 90, 40, 20, 20]
    groups = find_prefix_groups(tables, seq_lens, block_size=16, min_blocks=2, min_saved=1)
    assert groups is not None
    bounds = zip(groups.starts[:-1], groups.starts[1:], groups.prefix_lens, strict=True)
    found = {tuple(groups.rows[a:b]): p for a, b, p in bounds}
    assert found == {(0, 1, 3): 3 * 16, (2, 4): 2 * 16}
    assert groups.kv_start == [48, 48, 32, 48, 32, 0, 0]
    # A graph holds a fixed number of group slots: at most max_groups, those saving most reads
    # (group A saves 2 x 48 tokens, group B 32).
    capped = find_prefix_groups(tables, seq_lens, 16, min_blocks=2, min_saved=1, max_groups=1)
    assert capped is not None and capped.rows == [0, 1, 3] and capped.prefix_lens == [48]
    assert capped.kv_start == [48, 48, 0, 48, 0, 0, 0]


def test_groups_saving_too_little_each_are_left_to_plain_decode():
    """Group A saves 2 x 48 token reads, group B 32: at a per-group floor of 64 only A is kept,
    and the floor in all then counts A alone."""
    tables = _tables([[1, 2, 3, 4, 50], [1, 2, 3, 60], [9, 8, 70, 71], [1, 2, 3, 4, 5, 80],
                      [9, 8, 90]])  # fmt: skip
    seq_lens = [65, 60, 50, 90, 40]
    kept = find_prefix_groups(tables, seq_lens, 16, 2, min_saved=1, min_group_saved=64)
    assert kept is not None and kept.rows == [0, 1, 3] and kept.prefix_lens == [48]
    assert kept.kv_start == [48, 48, 0, 48, 0]
    assert find_prefix_groups(tables, seq_lens, 16, 2, min_saved=97, min_group_saved=64) is None
    both = find_prefix_groups(tables, seq_lens, 16, 2, min_saved=128, min_group_saved=32)
    assert both is not None and len(both.prefix_lens) == 2


def test_the_prefix_stops_short_of_each_rows_current_block():
    """Two rows with identical tables (a fully cached prompt): the prefix leaves each row's
    last, partly written block to its own pass."""
    tables = _tables([[1, 2, 3], [1, 2, 3]])
    groups = find_prefix_groups(tables, [40, 33], block_size=16, min_blocks=1, min_saved=1)
    assert groups is not None and groups.prefix_lens == [32]  # (33 - 1) // 16 = 2 blocks


def test_too_little_sharing_gives_no_groups():
    tables = _tables([[1, 2, 3], [1, 2, 4], [5, 6]])
    assert find_prefix_groups(tables, [40, 40, 20], 16, min_blocks=2, min_saved=64) is None
    assert find_prefix_groups(tables, [40, 40, 20], 16, min_blocks=3, min_saved=1) is None
    assert find_prefix_groups(tables[:1], [40], 16, min_blocks=1, min_saved=1) is None


def _cascade_tokens(runner, monkeypatch, steps: int = 6) -> tuple[list[list[int]], int]:
    """Request 1 prefills 14 tokens; requests 2 and 3 reuse its first 3 blocks (12 cached
    tokens) and add 2 of their own; then all three decode, and in the middle step request 4
    (the same 12 cached tokens) prefills beside them: a mixed step. -> (tokens per request,
    steps that ran grouped attention)."""
    monkeypatch.setattr(batch_builder, "MIN_PREFIX_TOKENS", 4)
    monkeypatch.setattr(batch_builder, "MIN_SAVED_TOKENS", 1)
    monkeypatch.setattr(batch_builder, "MIN_GROUP_SAVED_TOKENS", 1)
    grouped = []
    real = batch_builder.find_prefix_groups
    monkeypatch.setattr(
        batch_builder, "find_prefix_groups", lambda *a: grouped.append(real(*a)) or grouped[-1]
    )
    greedy = sampling()
    shared = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    prompts = {1: shared + [23, 24], 2: shared + [30, 31], 3: shared + [40, 41]}
    prompts[4] = shared + [50, 51]
    tables = {1: [0, 1, 2, 3, 4, 5], 2: [0, 1, 2, 10, 11, 12], 3: [0, 1, 2, 20, 21, 22]}
    tables[4] = [0, 1, 2, 30, 31, 32]

    def new(rid: int, cached: int) -> worker_pb2.NewRequest:
        return worker_pb2.NewRequest(
            request_id=rid,
            token_ids=prompts[rid],
            num_prompt_tokens=14,
            num_cached_tokens=cached,
            sampling=greedy,
        )

    stream, out = LocalStream(runner), {1: [], 2: [], 3: [], 4: []}
    first = stream.step(
        new_requests=[new(1, 0)],
        run_request_ids=[1],
        run_num_tokens=[14],
        run_num_new_blocks=[6],
        new_block_ids=tables[1],
    )
    out[1] += first.token_ids
    second = stream.step(
        new_requests=[new(2, 12), new(3, 12)],
        run_request_ids=[1, 2, 3],
        run_num_tokens=[1, 2, 2],
        run_num_new_blocks=[0, 6, 6],
        new_block_ids=tables[2] + tables[3],
    )
    for rid, token in zip((1, 2, 3), second.token_ids, strict=True):
        out[rid].append(token)
    running = [1, 2, 3]
    for i in range(steps):
        mixed = i == steps // 2
        fields = dict(new_requests=[new(4, 12)], new_block_ids=tables[4]) if mixed else {}
        result = stream.step(
            run_request_ids=running + [4] * mixed,
            run_num_tokens=[1, 1, 1] + [2] * mixed,
            run_num_new_blocks=[0, 0, 0] + [6] * mixed,
            **fields,
        )
        for rid, token in zip(running + [4] * mixed, result.token_ids, strict=True):
            out[rid].append(token)
    runner.close_table(stream.table)
    return [out[r] for r in (1, 2, 3, 4)], sum(g is not None for g in grouped)


def test_decode_steps_over_shared_blocks_run_grouped_and_give_the_plain_tokens(
    model_runner, monkeypatch
):
    """With cascade on, decode steps whose rows share cached blocks carry prefix groups (the
    worker found them), as does a mixed step's decode rows, and produce the same greedy tokens
    as plain decode attention."""
    plain, _ = _cascade_tokens(model_runner(cascade=False), monkeypatch)
    grouped, num_grouped = _cascade_tokens(model_runner(cascade=True), monkeypatch)
    assert num_grouped == 6  # every step after the first two: 5 decode-only, 1 mixed
    assert grouped == plain
    assert warm_up(model_runner(cascade=True)) > 0  # includes a grouped attention call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_grouped_decode_replays_its_graph_and_gives_the_plain_tokens(
    tiny_model_dir, monkeypatch
):
    """On the GPU the grouped decode steps replay the grouped CUDA graphs (the groups loaded into
    the bucket's static slots) and give the tokens of plain graph decode."""
    model = load_model(str(tiny_model_dir("LlamaForCausalLM")), "cuda", torch.float32)
    loads = []
    real = DecodeGraphs._load_groups
    monkeypatch.setattr(
        DecodeGraphs, "_load_groups", lambda self, *a: loads.append(a[1]) or real(self, *a)
    )

    def make(cascade: bool) -> ModelRunner:
        pool = kv_pool_for(model, 4, 64, torch.device("cuda"))
        return ModelRunner(model, pool, True, max_graph_batch_size=8, cascade=cascade)

    plain, _ = _cascade_tokens(make(False), monkeypatch)
    assert loads == []
    grouped, num_grouped = _cascade_tokens(make(True), monkeypatch)
    # every decode-only step in its graph; the mixed step's groups are not a decode graph's
    assert num_grouped == 6 and loads == [3] * 5
    assert grouped == plain

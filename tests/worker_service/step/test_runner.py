"""The model runner without gRPC: KV pool sizing, sampling that survives a preemption (the
sampled position is the RNG counter; penalties see device-held outputs), plans launched before
earlier results are read, and (GPU only) CUDA-graph decode equal to eager. ForwardBatch
building: test_batch_builder.py."""

from __future__ import annotations

import time

import pytest
import torch

from tests.worker_service.conftest import kv_pool_for
from tests.worker_service.driver import Driver, Seq, hf_greedy, load_hf_model, sampling
from yaie.worker.v1 import worker_pb2
from yaie.worker_service.config import KVPoolConfig
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.cuda_graphs import graph_batch_sizes
from yaie.worker_service.step.kv_pool import KVPool, bytes_per_block
from yaie.worker_service.step.runner import ModelRunner
from yaie.worker_service.step.warmup import warm_up
from yaie.worker_service.wire import plan_from_proto, result_to_proto

BLOCK_SIZE, NUM_BLOCKS = 4, 128
PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [300, 301]]


class LocalStream:
    """StepStream's step() over a ModelRunner in this process (protobuf in, protobuf out)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner, self.table, self.step_id = runner, runner.new_table(), 0

    def step(self, **fields) -> worker_pb2.StepResult:
        self.step_id += 1
        plan = plan_from_proto(worker_pb2.StepPlan(step_id=self.step_id, **fields))
        return result_to_proto(self.runner.launch(self.table, plan).wait())


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


@pytest.fixture(scope="module")
def runner(model_dir) -> ModelRunner:
    model = load_model(str(model_dir), "cpu", torch.float32)
    return ModelRunner(model, kv_pool_for(model, BLOCK_SIZE, NUM_BLOCKS))


def generate(
    runner: ModelRunner, params, preempt_at: int | None = None, max_new: int = 16, prompts=PROMPTS
) -> list[list[int]]:
    """Runs prompts to max_new tokens each; request 1 is preempted before step preempt_at."""
    driver = Driver(LocalStream(runner), BLOCK_SIZE, NUM_BLOCKS)
    seqs = [driver.add(Seq(i + 1, list(p), len(p), max_new, params)) for i, p in enumerate(prompts)]
    for step in range(200):
        if step == preempt_at:
            driver.preempt(seqs[0])
        if not driver.running:
            break
        driver.step()
    return [s.outputs for s in seqs]


def test_kv_pool_is_sized_from_a_block_count_or_a_cpu_budget():
    per_block = bytes_per_block(2, 2, 16, 4, torch.float32)
    assert per_block == 2 * 2 * 4 * 2 * 16 * 4
    cpu = torch.device("cpu")
    pool = KVPool.allocate(KVPoolConfig(4, num_blocks=10), 2, 2, 16, torch.float32, cpu)
    assert pool.num_blocks == 10 and pool.scratch_block == 10
    assert pool.cache.shape == (2, 2, 11, 4, 2, 16)
    budget = KVPool.allocate(
        KVPoolConfig(4, cpu_memory_bytes=per_block * 50), 2, 2, 16, torch.float32, cpu
    )
    assert budget.num_blocks == 49  # one block of the budget is the scratch block
    with pytest.raises(ValueError):
        KVPool.allocate(KVPoolConfig(4, cpu_memory_bytes=per_block), 2, 2, 16, torch.float32, cpu)
    with pytest.raises(ValueError):
        KVPoolConfig(4, memory_fraction=0.0)


def test_graph_batch_sizes_are_small_powers_of_two_then_multiples_of_16():
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert graph_batch_sizes(4) == [1, 2, 4]


def test_seeded_sampling_is_unchanged_by_preemption_and_by_batch_neighbours(runner):
    """The sampled token's position is the RNG counter: re-prefill after a preemption, or other
    requests in the batch, do not change a seeded request's tokens."""
    params = sampling(temperature=0.9, top_k=40, top_p=0.95, seed=1234)
    plain = generate(runner, params, max_new=12)
    assert generate(runner, params, preempt_at=7, max_new=12) == plain
    assert generate(runner, params, max_new=12, prompts=PROMPTS[:1])[0] == plain[0]
    assert len({tuple(t) for t in plain}) == 3


def test_penalties_see_device_held_outputs_and_match_transformers(runner, model_dir):
    """Greedy with a repetition penalty equals transformers' generate; frequency and presence
    penalties give the same tokens with and without a preemption."""
    repetition = generate(runner, sampling(repetition_penalty=1.5), max_new=12)
    hf = load_hf_model(model_dir)
    for prompt, tokens in zip(PROMPTS, repetition, strict=True):
        ids = torch.tensor([prompt])
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            repetition_penalty=1.5,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert tokens == out[0, len(prompt) :].tolist()
    assert repetition != [hf_greedy(hf, p, 12) for p in PROMPTS]  # the penalty mattered
    params = sampling(frequency_penalty=0.8, presence_penalty=0.5, repetition_penalty=1.2)
    assert generate(runner, params, preempt_at=6) == generate(runner, params)


def _prefill_plan() -> worker_pb2.StepPlan:
    """Step 1: request 1 (PROMPTS[0]) prefills its 5 tokens into blocks 0 and 1."""
    return worker_pb2.StepPlan(
        step_id=1,
        run_request_ids=[1],
        run_num_tokens=[5],
        run_num_new_blocks=[2],
        new_block_ids=[0, 1],
        new_requests=[
            worker_pb2.NewRequest(
                request_id=1, token_ids=PROMPTS[0], num_prompt_tokens=5, sampling=sampling()
            )
        ],
    )


def test_a_decode_past_its_block_table_fails_only_its_request(runner):
    """A decode at a block boundary with no new block sent is refused: its request fails and
    the worker drops it (the decode fast path checks the table's room as check_run_entry does)."""
    stream = LocalStream(runner)
    new = worker_pb2.NewRequest(
        request_id=7, token_ids=[5, 6, 7, 8], num_prompt_tokens=4, sampling=sampling()
    )
    first = stream.step(
        new_requests=[new],
        run_request_ids=[7],
        run_num_tokens=[4],
        run_num_new_blocks=[1],
        new_block_ids=[3],
    )
    assert first.token_ids[0] >= 0 and not first.request_errors
    refused = stream.step(run_request_ids=[7], run_num_tokens=[1], run_num_new_blocks=[0])
    assert [e.request_id for e in refused.request_errors] == [7]
    assert "block table holds 4 tokens" in refused.request_errors[0].message
    assert list(refused.token_ids) == [-1] and 7 not in stream.table
    runner.close_table(stream.table)


def test_a_plan_launched_before_the_previous_result_is_read_decodes_the_right_token(runner):
    table = runner.new_table()
    prefill = _prefill_plan()
    decodes = [
        worker_pb2.StepPlan(
            step_id=2 + i, run_request_ids=[1], run_num_tokens=[1], run_num_new_blocks=[0]
        )
        for i in range(3)
    ]
    pending = [runner.launch(table, plan_from_proto(p)) for p in [prefill, *decodes]]
    tokens = [p.wait().token_ids[0] for p in pending]
    assert tokens == generate(runner, sampling(), max_new=4, prompts=PROMPTS[:1])[0]


def test_a_step_reports_the_host_time_of_its_launch(runner):
    """launch_ms: from taking the plan to the step queued (on the CPU the forward runs inside
    it), within the wall time around launch(); carried to the StepResult."""
    table = runner.new_table()
    plan = _prefill_plan()
    started = time.perf_counter()
    pending = runner.launch(table, plan_from_proto(plan))
    wall_ms = (time.perf_counter() - started) * 1e3
    result = result_to_proto(pending.wait())
    assert result.token_ids[0] >= 0
    assert 0 < result.launch_ms <= wall_ms
    bad = worker_pb2.StepPlan(
        step_id=2, run_request_ids=[99], run_num_tokens=[1], run_num_new_blocks=[0]
    )
    assert runner.launch(table, plan_from_proto(bad)).wait().launch_ms == 0  # nothing launched
    table.release(1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_equals_eager_decode_and_transformers(model_dir, dtype):
    """On the GPU with the Triton kernels, graph replay (padded buckets) gives the eager tokens;
    in fp32 both equal transformers' greedy tokens."""
    device = torch.device("cuda")
    model = load_model(str(model_dir), device, dtype, attention_backend="triton")

    def make_runner(graphs: bool) -> ModelRunner:
        pool = kv_pool_for(model, BLOCK_SIZE, NUM_BLOCKS, device)
        return ModelRunner(model, pool, use_cuda_graphs=graphs, max_graph_batch_size=16)

    params = sampling(return_logprobs=True, top_logprobs=2)
    graph_runner, eager_runner = make_runner(True), make_runner(False)
    assert graph_runner.graphs is not None and eager_runner.graphs is None
    prompts = [[3 + (7 * i + 5 * j) % 600 for j in range(2 + 3 * i)] for i in range(5)]
    graph_tokens = generate(graph_runner, params, max_new=20, prompts=prompts)
    eager_tokens = generate(eager_runner, params, max_new=20, prompts=prompts)
    assert graph_tokens == eager_tokens
    if dtype == torch.float32:
        hf = load_hf_model(model_dir)
        assert graph_tokens == [hf_greedy(hf, p, 20) for p in prompts]


def test_warm_up_runs_every_step_kind_and_leaves_the_runner_as_it_found_it(runner):
    """warm_up (prefills, a prefix hit, mixed and decode steps, every sampler option) succeeds
    and changes nothing a client sees: greedy outputs after it equal those before it."""
    before = generate(runner, sampling(temperature=0.0), max_new=6)
    assert warm_up(runner) > 0.0
    assert generate(runner, sampling(temperature=0.0), max_new=6) == before
    tiny = kv_pool_for(runner.model, BLOCK_SIZE, 4)
    assert warm_up(ModelRunner(runner.model, tiny)) == 0.0  # too small a pool: skipped


def _mixed_step_results(runner: ModelRunner, together: bool) -> dict[int, tuple]:
    """Requests 2 and 4 prefill in step 1; then 2 and 4 decode while 1 and 3 prefill, in one
    mixed step (plan order 1, 2, 3, 4) or in separate steps. -> {request: (token, lp, top)}."""
    params = sampling(top_logprobs=2, return_logprobs=True)
    prompts = {1: PROMPTS[0], 2: PROMPTS[1], 3: PROMPTS[2], 4: [7, 8, 9, 10, 11, 12]}
    blocks = {rid: list(range(8 * rid, 8 * rid + 4)) for rid in prompts}

    def new(rid: int) -> worker_pb2.NewRequest:
        p = prompts[rid]
        return worker_pb2.NewRequest(
            request_id=rid,
            token_ids=p,
            num_prompt_tokens=len(p),
            num_cached_tokens=0,
            sampling=params,
        )

    def plan(runs: list[tuple[int, int, bool]]) -> dict:  # (request, tokens, is new)
        fresh = [r for r, _, is_new in runs if is_new]
        return dict(
            new_requests=[new(r) for r in fresh],
            run_request_ids=[r for r, _, _ in runs],
            run_num_tokens=[n for _, n, _ in runs],
            run_num_new_blocks=[4 if r in fresh else 0 for r, _, _ in runs],
            new_block_ids=[b for r in fresh for b in blocks[r]],
        )

    stream = LocalStream(runner)
    stream.step(**plan([(2, len(prompts[2]), True), (4, len(prompts[4]), True)]))
    second = [(1, len(prompts[1]), True), (2, 1, False), (3, len(prompts[3]), True), (4, 1, False)]
    results = (
        [stream.step(**plan(second))]
        if together
        else [stream.step(**plan([run])) for run in second]
    )
    out, order = {}, [r for r, _, _ in second]
    for result in results:
        ids = order[: len(result.token_ids)] if together else [order[len(out)]]
        for i, rid in enumerate(ids):
            top = list(
                zip(
                    result.top_token_ids[2 * i : 2 * i + 2],
                    result.top_logprobs[2 * i : 2 * i + 2],
                    strict=True,
                )
            )
            out[rid] = (result.token_ids[i], result.logprobs[i], top)
    stream.runner.close_table(stream.table)
    return out


def test_a_mixed_step_equals_its_entries_run_alone_with_logprobs_in_plan_order(runner):
    """A step that interleaves prefills and decodes (the runner runs the decodes first, through
    decode attention) returns each entry's token, logprob and top-2 in plan order, equal to
    running each entry in a step of its own."""
    together, alone = _mixed_step_results(runner, True), _mixed_step_results(runner, False)
    assert together.keys() == alone.keys() == {1, 2, 3, 4}
    for rid in together:
        assert together[rid][0] == alone[rid][0]
        assert together[rid][1] == pytest.approx(alone[rid][1], abs=1e-4)
        assert [t for t, _ in together[rid][2]] == [t for t, _ in alone[rid][2]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_step_with_triton_equals_entries_alone(model_dir):
    """The mixed-step split (decode kernel for the single-token rows, extend kernel for the
    rest, writing slices of one output) on the GPU, fp32: as each entry run alone."""
    device = torch.device("cuda")
    model = load_model(str(model_dir), device, torch.float32, attention_backend="triton")
    cuda_runner = ModelRunner(model, kv_pool_for(model, BLOCK_SIZE, NUM_BLOCKS, device))
    together = _mixed_step_results(cuda_runner, True)
    alone = _mixed_step_results(cuda_runner, False)
    for rid in together:
        assert together[rid][0] == alone[rid][0]
        assert together[rid][1] == pytest.approx(alone[rid][1], abs=1e-3)

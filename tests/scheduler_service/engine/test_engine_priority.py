"""Priority scheduling on fake workers: a high-priority request gets its first token a step or
two after arriving, whether the batch or the KV pool is full of low-priority requests (it
preempts one); every output stays exact and stats count requests per priority."""

from __future__ import annotations

import asyncio

import pytest
from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig
from yaie.scheduler_service.engine.sequence import Sequence
from yaie.scheduler_service.engine.stats import PriorityStats

VOCAB = FakeWorkerConfig().vocab_size


def steps_batch_full(ahead: int) -> int:
    """Worker steps from a request's arrival to its first token, at most, when the batch is
    full: the ahead + 1 plans that may be in flight when it arrives, then the plan that
    preempts a victim for it and runs its prefill."""
    return ahead + 2


def steps_pool_full(ahead: int) -> int:
    """... when it needs the victim's blocks (the pool is full): the plans in flight, the plan
    that preempts, then the plans in flight with the victim must be back before one runs it."""
    return 2 * ahead + 2


def _request(i: int, num_prompt: int, max_new: int, priority: int = 0) -> GenerationRequest:
    prompt = [(i * 29 + j * 5 + 1) % VOCAB for j in range(num_prompt)]
    return GenerationRequest(f"r{i}", prompt, SamplingConfig(seed=i), max_new, priority=priority)


def _expected(req: GenerationRequest) -> list[int]:
    return reference_output(req.prompt_ids, req.sampling.seed, req.max_new_tokens, VOCAB)


def _record_preemptions(engine: Engine) -> list[Sequence]:
    """The requests the (only) worker loop's policy preempts, in order."""
    policy = engine._loops[0].policy
    victims: list[Sequence] = []
    preempt = policy._preempt

    def recording(seq: Sequence) -> None:
        victims.append(seq)
        preempt(seq)

    policy._preempt = recording
    return victims


async def _until(predicate, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.002)


async def _first_token_steps(engine: Engine, worker, req: GenerationRequest) -> tuple[int, list]:
    """(worker steps from submitting req to its first token, its whole output)."""
    start = worker.num_steps
    events = engine.submit(req)
    first = await anext(events)
    steps = worker.num_steps - start
    tokens, _ = await collect(events)
    return steps, first.token_ids + tokens


@pytest.mark.parametrize("overlap,depth", [(True, 2), (True, 1), (False, 1)])
def test_full_batch_of_low_priority_requests_lets_a_high_one_in_at_once(
    overlap: bool, depth: int
) -> None:
    """max_running_requests low-priority requests run, more wait: a priority-10 request
    preempts the newest running one and has its first token within a step or two, while a
    priority-0 request that came just before it still waits; all outputs are exact."""
    config = SchedulerConfig(max_running_requests=4, enable_overlap=overlap, overlap_depth=depth)
    worker_config = FakeWorkerConfig(step_delay_s=0.005)
    low = [_request(i, 10, 60) for i in range(8)]
    control, urgent = _request(8, 10, 4), _request(9, 10, 4, priority=10)

    async def main() -> None:
        async with engine_on_fake_workers(config, worker_config) as (engine, (handle,)):
            victims = _record_preemptions(engine)
            tasks = [asyncio.create_task(collect(engine.submit(r))) for r in low]
            await _until(lambda: engine.stats().running == 4 and handle.worker.num_steps > 2)
            control_task = asyncio.create_task(collect(engine.submit(control)))
            steps, tokens = await _first_token_steps(engine, handle.worker, urgent)
            assert steps <= steps_batch_full(config.plans_ahead)
            assert tokens == _expected(urgent)
            assert not control_task.done(), "the priority-0 request waits its turn"
            assert victims and {v.priority for v in victims} == {0}
            for req, task in zip(low + [control], [*tasks, control_task], strict=True):
                assert (await task)[0] == _expected(req)
            assert handle.worker.violations == [] and handle.worker.num_resumed >= 1
            assert engine.stats().workers[0].used_blocks == 0
            engine._loops[0].kv.check_integrity()

    asyncio.run(main())


@pytest.mark.parametrize("depth", [1, 2])
def test_full_pool_preempts_the_lowest_priority_for_a_higher_one(depth: int) -> None:
    """The KV pool is full (the batch is not): a priority-10 request preempts a priority-0
    request (never the priority-5 one) and has its first token a step or two later."""
    config = SchedulerConfig(max_running_requests=8, overlap_depth=depth)
    worker_config = FakeWorkerConfig(num_blocks=32, block_size=4, step_delay_s=0.01)
    middle = _request(0, 24, 8, priority=5)  # 6 blocks, 8 with its output
    low = [_request(i, 24, 8) for i in range(1, 4)]
    urgent = _request(9, 36, 4, priority=10)  # 9 blocks: more than are free

    async def main() -> None:
        async with engine_on_fake_workers(config, worker_config) as (engine, (handle,)):
            victims = _record_preemptions(engine)
            tasks = [asyncio.create_task(collect(engine.submit(r))) for r in [middle, *low]]
            await _until(lambda: engine.stats().running == 4 and handle.worker.num_steps > 1)
            assert engine.stats().workers[0].free_blocks < 9
            steps, tokens = await _first_token_steps(engine, handle.worker, urgent)
            assert steps <= steps_pool_full(config.plans_ahead), steps
            assert tokens == _expected(urgent)
            assert victims and {v.priority for v in victims} == {0}
            for req, task in zip([middle, *low], tasks, strict=True):
                assert (await task)[0] == _expected(req)
            assert handle.worker.violations == []
            engine._loops[0].kv.check_integrity()

    asyncio.run(main())


def test_stats_count_waiting_and_running_per_priority() -> None:
    """EngineStats.priorities: one entry per priority present, highest first, summing to the
    totals; empty when idle."""
    config = SchedulerConfig(max_running_requests=2)
    worker_config = FakeWorkerConfig(step_delay_s=0.01)
    reqs = [_request(i, 8, 40, priority=p) for i, p in enumerate([3, 0, 0, -2, 3])]

    async def main() -> None:
        async with engine_on_fake_workers(config, worker_config) as (engine, _):
            streams = [engine.submit(r) for r in reqs]  # all queued before the first step
            tasks = [asyncio.create_task(collect(s)) for s in streams]
            await _until(lambda: engine.stats().running == 2)
            stats = engine.stats()
            assert stats.priorities == [
                PriorityStats(3, 0, 2),
                PriorityStats(0, 2, 0),
                PriorityStats(-2, 1, 0),
            ]
            assert sum(p.waiting for p in stats.priorities) == stats.waiting == 3
            await asyncio.gather(*tasks)
            assert engine.stats().priorities == []

    asyncio.run(main())

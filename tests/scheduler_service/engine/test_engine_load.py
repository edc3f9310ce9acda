"""Engine under pressure on fake workers: preemption, aborts, fairness, several and failing
workers. Outputs stay exact and no block is held afterwards."""

from __future__ import annotations

import asyncio

import pytest
from fake_worker import (
    FakeWorkerConfig,
    collect,
    engine_on_fake_workers,
    reference_output,
    start_fake_worker,
)

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.errors import UnavailableError
from yaie.scheduler_service.engine.request import FinishReason, GenerationRequest, SamplingConfig

VOCAB = FakeWorkerConfig().vocab_size


def _request(name: str, prompt: list[int], max_new: int) -> GenerationRequest:
    return GenerationRequest(name, prompt, SamplingConfig(seed=len(name) * 7 + prompt[0]), max_new)


def _expected(req: GenerationRequest) -> list[int]:
    return reference_output(req.prompt_ids, req.sampling.seed, req.max_new_tokens, VOCAB)


def _assert_no_block_held(engine: Engine) -> None:
    for loop, worker in zip(engine._loops, engine.stats().workers, strict=True):
        assert worker.used_blocks == 0 and worker.free_blocks + worker.cached_blocks > 0
        loop.kv.check_integrity()


@pytest.mark.parametrize("overlap", [True, False])
def test_pool_too_small_preempts_and_outputs_stay_exact(overlap: bool) -> None:
    """Running requests outgrow a 24-block pool: preemptions happen, every output is exact,
    and afterwards no block is held."""
    worker = FakeWorkerConfig(num_blocks=24, block_size=4)
    config = SchedulerConfig(max_num_batched_tokens=64, enable_overlap=overlap)
    reqs = [
        _request(f"p{i}", [(i * 17 + j * 3) % VOCAB for j in range(6 + 3 * i)], 30)
        for i in range(8)
    ]

    async def main() -> None:
        async with engine_on_fake_workers(config, worker) as (engine, (handle,)):
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            for req, (tokens, events) in zip(reqs, results, strict=True):
                assert tokens == _expected(req)
                assert events[-1].finish_reason is FinishReason.LENGTH
            stats = engine.stats()
            assert stats.num_preemptions > 0 and handle.worker.num_resumed > 0
            assert stats.waiting == stats.running == 0 and stats.completed_requests == 8
            _assert_no_block_held(engine)
            assert handle.worker.violations == []

    asyncio.run(main())


def test_32_streams_with_a_quarter_cancelled() -> None:
    """32 concurrent streams, 8 cancelled mid-way (Abort, or the client closing its stream):
    every survivor gets all its tokens exactly; no block is held afterwards."""
    worker = FakeWorkerConfig(num_blocks=96, block_size=4, step_delay_s=0.001)
    reqs = [
        _request(f"s{i}", [(i * 11 + j) % VOCAB for j in range(4 + i % 9)], 24) for i in range(32)
    ]

    async def consume(engine: Engine, i: int) -> list[int] | None:
        events = engine.submit(reqs[i])
        if i % 4:
            return (await collect(events))[0]
        tokens: list[int] = []
        async for event in events:
            tokens += event.token_ids
            if len(tokens) >= 4 + i // 4:
                break
        if i % 8:
            assert engine.abort(reqs[i].request_id)
        await events.aclose()  # for i % 8 == 0: the client's cancel alone aborts
        return None

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
            outputs = await asyncio.gather(*(consume(engine, i) for i in range(32)))
            for req, out in zip(reqs, outputs, strict=True):
                assert out is None or out == _expected(req)
            for _ in range(100):  # the cancelled ones' last plans may still be in flight
                if engine.stats().running == 0:
                    break
                await asyncio.sleep(0.01)
            stats = engine.stats()
            assert stats.running == 0 and stats.completed_requests == 32
            _assert_no_block_held(engine)
            assert handle.worker.violations == []

    asyncio.run(main())


@pytest.mark.parametrize("max_wait_steps", [6, 100_000])
def test_no_starvation_under_prefix_sharing_stream(max_wait_steps: int) -> None:
    """A request sharing no prefix is not starved by a stream of prefix-sharing requests that
    longest-prefix-first ordering prefers (the age bound lets it in; without it, it waits)."""
    shared = [(j * 5 + 1) % VOCAB for j in range(32)]
    config = SchedulerConfig(max_running_requests=2, max_wait_steps=max_wait_steps)
    sharers = [_request(f"share{i}", shared + [i % VOCAB], 4) for i in range(24)]
    loner = _request("loner", [7, 7, 7, 8], 4)

    async def main() -> list[str]:
        done: list[str] = []

        async def run(req: GenerationRequest) -> None:
            tokens, _ = await collect(engine.submit(req))
            assert tokens == _expected(req)
            done.append(req.request_id)

        async with engine_on_fake_workers(config) as (engine, _):
            await run(_request("warm", shared + [100], 2))  # the shared prefix is cached
            tasks = [asyncio.create_task(run(r)) for r in sharers[:3] + [loner] + sharers[3:]]
            await asyncio.gather(*tasks)
        return done

    done = asyncio.run(main())
    if max_wait_steps < 100:
        assert done.index("loner") < 12
    else:
        assert done.index("loner") >= 21  # the ordering alone would starve it


def test_two_workers_share_the_load_and_route_by_prefix() -> None:
    """Requests spread over two workers; a prompt whose prefix one worker caches goes there."""
    shared = [(j * 3 + 2) % VOCAB for j in range(40)]
    reqs = [_request(f"w{i}", [(i * 13 + j) % VOCAB for j in range(9)], 8) for i in range(10)]

    async def main() -> None:
        workers = (FakeWorkerConfig(), FakeWorkerConfig())
        async with engine_on_fake_workers(SchedulerConfig(), *workers) as (engine, handles):
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            assert [t for t, _ in results] == [_expected(r) for r in reqs]
            assert all(h.worker.num_new_requests > 0 for h in handles)
            await collect(engine.submit(_request("first", shared + [1], 4)))
            tokens, events = await collect(engine.submit(_request("again", shared + [2], 4)))
            assert events[-1].num_cached_tokens == 40
            assert tokens == _expected(_request("again", shared + [2], 4))
            _assert_no_block_held(engine)
            assert all(h.worker.violations == [] for h in handles)

    asyncio.run(main())


def test_broken_stream_requeues_requests_and_the_worker_rejoins() -> None:
    """When the step stream breaks, the worker is lost and rejoins on a new stream; its live
    requests are re-sent with their output so far and complete with the exact output."""
    worker = FakeWorkerConfig(fail_at_step=4, max_failures=1)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
            reqs = [_request(f"b{i}", [1, 2, i + 1], 30) for i in range(3)]
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            for req, (tokens, events) in zip(reqs, results, strict=True):
                assert events[-1].finish_reason is FinishReason.LENGTH and not events[-1].error
                assert tokens == _expected(req)
            assert engine._loops[0].num_losses == 1 and engine.stats().workers[0].healthy
            assert handle.worker.num_failures == 1 and handle.worker.num_resumed >= 3
            assert engine.stats().workers[0].used_blocks == 0 and engine.serving
            assert handle.worker.violations == []

    asyncio.run(main())


def test_worker_of_another_protocol_version_is_refused() -> None:
    """start() refuses a worker whose Describe reports another protocol version."""

    async def main() -> None:
        handle = await start_fake_worker(FakeWorkerConfig(protocol_version=99))
        engine = Engine([handle.address], SchedulerConfig())
        try:
            with pytest.raises(UnavailableError, match="protocol"):
                await engine.start()
            assert not engine.ready
        finally:
            await handle.stop()

    asyncio.run(main())

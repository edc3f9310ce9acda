"""Lost workers on fake workers: a dead or hung worker's requests finish on the others with the
exact output (no token repeated or lost); with no worker left requests fail UNAVAILABLE after
the wait; a worker restarted on its port rejoins with a fresh pool."""

from __future__ import annotations

import asyncio
import time

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
FAST = SchedulerConfig(step_timeout_s=0.5, health_check_interval_s=0.05, no_worker_timeout_s=0.5)


def _request(i: int, max_new: int = 24) -> GenerationRequest:
    prompt = [(i * 37 + j * 11) % VOCAB for j in range(5 + i % 7)]
    return GenerationRequest(f"f{i}", prompt, SamplingConfig(seed=500 + i), max_new)


def _expected(req: GenerationRequest) -> list[int]:
    return reference_output(req.prompt_ids, req.sampling.seed, req.max_new_tokens, VOCAB)


async def _gather_exact(engine: Engine, reqs: list[GenerationRequest]) -> None:
    """Every request completes (LENGTH) with the fake model's exact output, each token once."""
    results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
    for req, (tokens, events) in zip(reqs, results, strict=True):
        assert events[-1].finish_reason is FinishReason.LENGTH, events[-1].error
        assert tokens == _expected(req)
        assert events[-1].num_output_tokens == req.max_new_tokens


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_killed_worker_requests_finish_on_the_other_exactly() -> None:
    """16 streams over two workers; one worker's server dies mid-way: all 16 complete with the
    exact output on the survivor, which got the dead worker's requests re-sent with output."""
    slow = FakeWorkerConfig(step_delay_s=0.005)

    async def main() -> None:
        async with engine_on_fake_workers(FAST, slow, slow) as (engine, (a, b)):
            reqs = [_request(i) for i in range(16)]
            done = asyncio.gather(_gather_exact(engine, reqs))
            await _until(lambda: a.worker.num_steps >= 5)
            await a.stop()
            await done
            assert engine._loops[0].num_losses == 1 and not engine.stats().workers[0].healthy
            assert b.worker.num_resumed > 0 and b.worker.violations == []
            assert engine.stats().workers[1].used_blocks == 0 and engine.serving

    asyncio.run(main())


def test_hung_worker_is_detected_by_the_step_deadline() -> None:
    """A worker whose step never answers (health still SERVING) is lost within step_timeout_s;
    its requests finish elsewhere with the exact output; it rejoins after the settle time."""
    hangs = FakeWorkerConfig(step_delay_s=0.002, hang_at_step=4)
    fine = FakeWorkerConfig(step_delay_s=0.002)

    async def main() -> None:
        async with engine_on_fake_workers(FAST, hangs, fine) as (engine, (a, _)):
            reqs = [_request(i) for i in range(8)]
            done = asyncio.gather(_gather_exact(engine, reqs))
            await asyncio.wait_for(a.worker.hung.wait(), 5)
            hung_at = time.monotonic()
            await _until(lambda: engine._loops[0].num_losses > 0)
            lost_at = time.monotonic()
            assert lost_at - hung_at < FAST.step_timeout_s + 1.0
            await done
            # Still alive and SERVING: it rejoins only after the settle time (its old stream's
            # queued plans could otherwise write into blocks handed out afresh).
            await _until(lambda: engine._loops[0].healthy)
            assert time.monotonic() - lost_at >= FAST.step_timeout_s
            await _gather_exact(engine, [_request(20), _request(21)])

    asyncio.run(main())


def test_no_worker_left_unavailable_after_the_wait_then_a_restart_rejoins() -> None:
    """The only worker dies: a request waits no_worker_timeout_s, then fails UNAVAILABLE and the
    engine is not serving; a worker restarted on the same port rejoins with a fresh pool."""

    async def main() -> None:
        handle = await start_fake_worker(FakeWorkerConfig())
        port = int(handle.address.rsplit(":", 1)[1])
        engine = Engine([handle.address], FAST)
        await engine.start()
        try:
            await _gather_exact(engine, [_request(0)])
            await handle.stop()
            await _until(lambda: not engine.serving)
            start = time.monotonic()
            with pytest.raises(UnavailableError):
                await collect(engine.submit(_request(1)))
            assert FAST.no_worker_timeout_s <= time.monotonic() - start < 3.0
            handle = await start_fake_worker(FakeWorkerConfig(), port=port)
            await _until(lambda: engine.serving)
            await _gather_exact(engine, [_request(2)])
            assert engine._loops[0].num_losses == 1 and engine.stats().workers[0].used_blocks == 0
            assert handle.worker.violations == []
        finally:
            await engine.stop()
            await handle.stop()

    asyncio.run(main())


def test_requests_wait_for_a_worker_to_come_back() -> None:
    """Requests running and queued when the only worker dies wait for it (within
    no_worker_timeout_s) and complete exactly once it is back on the same port."""
    config = SchedulerConfig(health_check_interval_s=0.05, no_worker_timeout_s=20.0)
    slow = FakeWorkerConfig(step_delay_s=0.005)

    async def main() -> None:
        async with engine_on_fake_workers(config, slow) as (engine, (handle,)):
            port = int(handle.address.rsplit(":", 1)[1])
            reqs = [_request(i) for i in range(4)]
            done = asyncio.gather(_gather_exact(engine, reqs))
            await _until(lambda: handle.worker.num_steps >= 5)
            await handle.stop()
            await _until(lambda: not engine.serving)
            assert engine.stats().waiting == 4
            back = await start_fake_worker(slow, port=port)
            try:
                await asyncio.wait_for(done, 10)
                assert back.worker.num_resumed > 0 and back.worker.violations == []
            finally:
                await back.stop()

    asyncio.run(main())


@pytest.mark.parametrize("fault", ["token_out_of_vocab", "short_result", "unknown_request_error"])
def test_bad_worker_reply_fails_only_the_affected_requests(fault: str) -> None:
    """A token id outside the vocabulary fails that request; a result shorter than its plan
    fails that step's requests; an error for an unknown request id is ignored. The scheduler
    goes on: every other request is exact, and a later request succeeds."""
    worker = FakeWorkerConfig(fault=fault, fault_step=6, step_delay_s=0.002)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
            reqs = [_request(i) for i in range(6)]
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            failed = [
                req
                for req, (_, events) in zip(reqs, results, strict=True)
                if events[-1].finish_reason is FinishReason.ABORT
            ]
            for req, (tokens, events) in zip(reqs, results, strict=True):
                if req in failed:
                    assert events[-1].error and tokens == _expected(req)[: len(tokens)]
                else:
                    assert tokens == _expected(req)
            expected_failures = {"token_out_of_vocab": 1, "unknown_request_error": 0}
            assert len(failed) == expected_failures.get(fault, len(reqs))
            await _gather_exact(engine, [_request(9)])
            assert engine.stats().workers[0].used_blocks == 0 and engine.serving
            assert engine._loops[0].num_losses == 0

    asyncio.run(main())


def test_orphan_that_fits_no_remaining_pool_waits_then_fails_unavailable() -> None:
    """A request only the lost worker's pool could hold is not forced onto a smaller one: it
    waits for a worker able to hold it, then fails UNAVAILABLE; small requests still run."""
    big = FakeWorkerConfig(num_blocks=64, step_delay_s=0.005)
    small = FakeWorkerConfig(num_blocks=8, step_delay_s=0.005)  # 32 tokens

    async def main() -> None:
        async with engine_on_fake_workers(FAST, big, small) as (engine, (a, b)):
            large = GenerationRequest("large", list(range(1, 21)), SamplingConfig(seed=1), 40)
            events = engine.submit(large)
            await _until(lambda: a.worker.num_steps >= 3)
            await a.stop()
            await _until(lambda: engine.stats().waiting == 1)
            await _gather_exact(engine, [_request(3, 8)])
            with pytest.raises(UnavailableError):
                await collect(events)
            assert b.worker.violations == [] and engine.serving

    asyncio.run(main())

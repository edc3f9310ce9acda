"""Backpressure: a request whose client leaves max_stream_backlog tokens unread is scheduled no
more (its blocks kept) until the client reads; then it resumes with exactly the output it would
have had. A held-back request gives up its blocks or its running slot (preempted) to requests
that can run, rather than blocking them. Before, an unread stream generated to its end."""

from __future__ import annotations

import asyncio

import pytest
from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.request import FinishReason, GenerationRequest, SamplingConfig

BACKLOG = 8
VOCAB = FakeWorkerConfig().vocab_size


def _request(name: str, prompt_len: int, max_new: int) -> GenerationRequest:
    prompt = [(len(name) * 17 + j * 7) % VOCAB for j in range(prompt_len)]
    return GenerationRequest(name, prompt, SamplingConfig(seed=len(name) + prompt_len), max_new)


def _expected(req: GenerationRequest) -> list[int]:
    return reference_output(req.prompt_ids, req.sampling.seed, req.max_new_tokens, VOCAB)


async def _until_idle(handle, timeout_s: float = 10.0) -> int:
    """The worker's step count once it has stopped changing for 0.2 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last, since = -1, loop.time()
    while loop.time() < deadline:
        if handle.worker.num_steps != last:
            last, since = handle.worker.num_steps, loop.time()
        elif loop.time() - since > 0.2:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"the worker kept stepping ({last} steps)")


@pytest.mark.parametrize("overlap", [True, False])
def test_an_unread_stream_pauses_at_the_bound_and_resumes_exactly(overlap: bool) -> None:
    config = SchedulerConfig(max_stream_backlog=BACKLOG, enable_overlap=overlap)

    async def main() -> None:
        async with engine_on_fake_workers(config) as (engine, (handle,)):
            unread = _request("unread", 10, 300)
            events = engine.submit(unread)
            await asyncio.sleep(0)  # the iterator is not read: its tokens pile up
            steps = await _until_idle(handle)
            seq = engine._live[("", "unread")].seqs[0]
            assert BACKLOG <= seq.num_output_tokens <= BACKLOG + 2  # + tokens in flight
            assert seq.held_back and engine.stats().running == 1
            assert engine.stats().workers[0].used_blocks > 0  # paused, its KV kept
            other = _request("read", 6, 40)  # a reading client is not held up meanwhile
            assert (await collect(engine.submit(other)))[0] == _expected(other)
            await _until_idle(handle)
            assert engine._live[("", "unread")].seqs[0].num_output_tokens <= BACKLOG + 2
            tokens, seen = await collect(events)  # reading resumes it
            assert tokens == _expected(unread)
            assert seen[-1].finish_reason is FinishReason.LENGTH
            assert handle.worker.num_steps > steps
            assert engine.stats().workers[0].used_blocks == 0
            assert handle.worker.violations == []

    asyncio.run(main())


def test_a_held_back_request_is_preempted_when_its_blocks_are_needed() -> None:
    """A 24-block pool: the unread request holds 8 blocks; the next needs 18 of them."""
    config = SchedulerConfig(max_stream_backlog=BACKLOG)
    worker = FakeWorkerConfig(num_blocks=24, block_size=4)

    async def main() -> None:
        async with engine_on_fake_workers(config, worker) as (engine, (handle,)):
            unread = _request("unread", 20, 60)
            events = engine.submit(unread)
            await _until_idle(handle)
            big = _request("big", 40, 30)  # 70 tokens: 18 blocks
            tokens, _ = await asyncio.wait_for(collect(engine.submit(big)), 20)
            assert tokens == _expected(big)
            assert engine.stats().num_preemptions >= 1
            assert (await collect(events))[0] == _expected(unread)
            assert engine.stats().workers[0].used_blocks == 0
            engine._loops[0].kv.check_integrity()
            assert handle.worker.violations == []

    asyncio.run(main())


def test_a_held_back_request_gives_up_its_running_slot() -> None:
    config = SchedulerConfig(max_stream_backlog=BACKLOG, max_running_requests=1)

    async def main() -> None:
        async with engine_on_fake_workers(config) as (engine, (handle,)):
            unread = _request("unread", 10, 60)
            events = engine.submit(unread)
            await _until_idle(handle)
            waiting = _request("waiting", 12, 30)
            tokens, _ = await asyncio.wait_for(collect(engine.submit(waiting)), 20)
            assert tokens == _expected(waiting)
            assert engine._live[("", "unread")].seqs[0].num_output_tokens <= BACKLOG + 2
            assert (await collect(events))[0] == _expected(unread)
            assert handle.worker.violations == []

    asyncio.run(main())


def test_a_stream_interval_past_the_bound_does_not_stall_a_reading_client() -> None:
    """The reader is woken for the tokens of a held-back request, even short of an interval."""
    config = SchedulerConfig(
        max_stream_backlog=BACKLOG, stream_interval=4 * BACKLOG, stream_interval_min_batch=1
    )

    async def main() -> None:
        async with engine_on_fake_workers(config) as (engine, (handle,)):
            req = _request("reader", 10, 100)
            tokens, _ = await asyncio.wait_for(collect(engine.submit(req)), 20)
            assert tokens == _expected(req)

    asyncio.run(main())

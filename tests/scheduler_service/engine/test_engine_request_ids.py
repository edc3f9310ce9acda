"""A request_id is free again as soon as its stream ended (stop string, cancel, Abort), even while
the worker loop still has to drop the old request: the new one runs exactly, nothing leaks."""

from __future__ import annotations

import asyncio

from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.request import FinishReason, GenerationRequest, SamplingConfig

PROMPT = [5, 6, 7, 8, 9]


def _request(max_new: int) -> GenerationRequest:
    return GenerationRequest("same-id", PROMPT, SamplingConfig(seed=7), max_new)


def test_request_id_is_reusable_right_after_finish_and_after_abort():
    async def main() -> None:
        worker = FakeWorkerConfig(step_delay_s=0.2)  # steps long enough to open the window
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, _):
            for end in (engine.finish, engine.abort):
                events = engine.submit(_request(50))
                await events.__anext__()
                end("same-id")
                await events.aclose()
                assert engine.abort("same-id") is False  # that stream is over
                tokens, seen = await collect(engine.submit(_request(6)))
                assert seen[-1].finish_reason is FinishReason.LENGTH
                assert tokens == reference_output(PROMPT, 7, 6, worker.vocab_size)
            for _ in range(50):  # the dropped requests' blocks come back after their steps
                if all(w.used_blocks == 0 for w in engine.stats().workers):
                    break
                await asyncio.sleep(0.1)
            assert [w.used_blocks for w in engine.stats().workers] == [0]

    asyncio.run(main())

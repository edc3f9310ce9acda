"""The stream interval: under load a request's reader is woken once per stream_interval tokens
(first and last token at once), and the tokens it gets stay exact."""

from __future__ import annotations

import asyncio

from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.request import (
    FinishReason,
    GenerationRequest,
    OutputEvent,
    SamplingConfig,
)
from yaie.scheduler_service.engine.sequence import Outbox

VOCAB = FakeWorkerConfig().vocab_size


def _event(tokens: list[int], done: bool = False) -> OutputEvent:
    reason = FinishReason.LENGTH if done else None
    return OutputEvent("r", tokens, [], 3, 0, len(tokens), finish_reason=reason)


def test_outbox_wakes_the_reader_at_min_tokens_at_the_end_or_on_release() -> None:
    """Held tokens are not lost: they come out merged once min_tokens are pending, when the
    request finishes, or on release(); min_tokens=1 wakes on every event."""

    async def main() -> None:
        box = Outbox()
        box.put(_event([1]), 3)
        box.put(_event([2]), 3)
        assert not box.ready
        box.put(_event([3]), 3)
        assert [e.token_ids for e in await box.get()] == [[1, 2, 3]]
        box.put(_event([4]), 3)
        box.release()
        assert [e.token_ids for e in await box.get()] == [[4]]
        box.put(_event([5]), 3)
        box.put(_event([6], done=True), 3)
        (last,) = await box.get()
        assert last.token_ids == [5, 6] and last.finish_reason is FinishReason.LENGTH
        box.put(_event([7]))
        assert box.ready

    asyncio.run(main())


def test_a_waiting_reader_is_woken_by_tokens_merged_in_place() -> None:
    """extend() merges a decode's token into the undelivered event (no event object per token)
    and wakes a reader already waiting in get() once min_tokens are pending, exactly once."""

    async def main() -> None:
        box = Outbox()
        reader = asyncio.create_task(box.get())
        await asyncio.sleep(0)  # the reader waits
        assert box.extend(0, [1], [], 1, 3) == 0  # nothing pending: the caller must put()
        assert box.put(_event([1]), 3) == 1
        assert box.extend(0, [2], [], 2, 3) == 2
        await asyncio.sleep(0)
        assert not reader.done() and not box.ready
        assert box.extend(0, [3], [], 3, 3) == 3 and box.ready
        assert box.extend(0, [4], [], 4, 3) == 4  # (already woken)
        (event,) = await reader
        assert event.token_ids == [1, 2, 3, 4] and event.num_output_tokens == 4
        assert not box.ready and box.num_undelivered() == 0

    asyncio.run(main())


# The interval on at any batch size (as under load).
LOADED = SchedulerConfig(stream_interval=4, stream_interval_min_batch=1)


def test_under_load_events_carry_the_interval_and_outputs_stay_exact() -> None:
    """With the interval on at any batch size, every event ends at one of its request's frame
    boundaries (output positions p with (p + phase) % stream_interval == 0) or at the first or
    last token; each request's tokens equal the reference."""
    reqs = [
        GenerationRequest(
            f"s{i}", [(i * 7 + j) % VOCAB for j in range(5)], SamplingConfig(seed=i), 13 + i
        )
        for i in range(6)
    ]

    async def main() -> None:
        async with engine_on_fake_workers(LOADED, FakeWorkerConfig()) as (engine, _):
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
        for req, (tokens, events) in zip(reqs, results, strict=True):
            expected = reference_output(
                req.prompt_ids, req.sampling.seed, req.max_new_tokens, VOCAB
            )
            assert tokens == expected
            assert len(events[0].token_ids) == 1  # the first token is not held (TTFT)
            ends = [e.num_output_tokens for e in events[1:-1]]
            assert len({end % 4 for end in ends}) <= 1  # one phase per request
            assert all(len(e.token_ids) == 4 for e in events[2:-1])  # between boundaries
            assert 1 <= len(events[1].token_ids) <= 4
            assert len(events) <= 3 + (len(tokens) - 1) // 4
            assert events[-1].num_output_tokens == len(tokens)

    asyncio.run(main())


def test_requests_admitted_together_wake_their_readers_on_different_steps() -> None:
    """Eight requests submitted at once (one admission wave, decoding in lockstep) end their
    events at every residue of the interval, two per residue: a step wakes a quarter of the
    readers, not all of them every fourth step (the frontend's per-frame work spread out)."""
    reqs = [
        GenerationRequest(f"w{i}", [(i * 5 + j) % VOCAB for j in range(6)], SamplingConfig(), 30)
        for i in range(8)
    ]

    async def main() -> None:
        async with engine_on_fake_workers(LOADED, FakeWorkerConfig()) as (engine, _):
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
        residues = []
        for _, events in results:
            (phase,) = {e.num_output_tokens % 4 for e in events[1:-1]}
            residues.append(phase)
        assert sorted(residues) == [0, 0, 1, 1, 2, 2, 3, 3]

    asyncio.run(main())

"""GenerationRequest.n over fake workers: n completions of one prompt, each equal to a single
request with its derived seed, the prompt's full blocks computed once, every block freed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.request import (
    FinishReason,
    GenerationRequest,
    OutputEvent,
    SamplingConfig,
    completion_seed,
)
from yaie.scheduler_service.ops.step_trace import ENV

VOCAB = FakeWorkerConfig().vocab_size
BLOCK = FakeWorkerConfig().block_size
EOS = {"eos_token_id": 3, "eos_period": 6}
MAX_NEW = 8


def _request(rid: str, prompt: list[int], n: int, max_new: int = 20, seed: int = 77):
    return GenerationRequest(
        rid, prompt, SamplingConfig(seed=seed), max_new, stop_token_ids=frozenset({3}), n=n
    )


async def _settled(engine) -> None:
    """Waits until the worker loop holds no request (retiring ones wait for their last plan),
    then checks that no block is held and the pool is consistent."""
    loop = engine._loops[0]
    for _ in range(300):
        if not (loop.running or loop.retiring or loop.waiting):
            break
        await asyncio.sleep(0.01)
    assert engine.stats().workers[0].used_blocks == 0 and engine.stats().running == 0
    loop.kv.check_integrity()


def _by_index(events: list[OutputEvent]) -> dict[int, list[OutputEvent]]:
    out: dict[int, list[OutputEvent]] = {}
    for event in events:
        out.setdefault(event.index, []).append(event)
    return out


def test_completion_seed_is_splitmix64_and_keeps_completion_0() -> None:
    """Completion 0 keeps the seed; the others are SplitMix64 outputs (published test values
    for seed 1234567: 6457827717110365317, 3203168211198807973), all distinct and in 64 bits."""
    assert completion_seed(1234567, 0) == 1234567
    assert [completion_seed(1234567, i) for i in (1, 2)] == [
        6457827717110365317,
        3203168211198807973,
    ]
    seeds = {completion_seed(2**64 - 1, i) for i in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**64 for s in seeds)


def test_n8_equals_8_single_requests_with_derived_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n = 8 (chunked prefill, overlap on): completion i equals the single request with
    completion_seed(seed, i), with its own finish reason and usage; the prompt's full blocks
    are computed once (the step trace's prefill tokens), the others hit them in the tree."""
    trace = tmp_path / "steps.jsonl"
    monkeypatch.setenv(ENV, str(trace))
    prompt = [(j * 11 + 2) % VOCAB for j in range(6 * BLOCK + 3)]  # 27 tokens: 24 in 6 blocks
    req = _request("multi", prompt, 8, max_new=MAX_NEW)
    worker = FakeWorkerConfig(**EOS)
    config = SchedulerConfig(prefill_chunk_size=10)

    async def main() -> tuple[list[OutputEvent], list[list[int]]]:
        async with engine_on_fake_workers(config, worker) as (engine, (handle,)):
            _, events = await collect(engine.submit(req))
            lines = trace.read_text().splitlines()
            singles = [
                GenerationRequest(
                    f"single{i}",
                    prompt,
                    SamplingConfig(seed=completion_seed(77, i)),
                    MAX_NEW,
                    stop_token_ids=frozenset({3}),
                )
                for i in range(8)
            ]
            outs = await asyncio.gather(*(collect(engine.submit(r)) for r in singles))
            assert handle.worker.violations == []
            await _settled(engine)
        prefill = sum(json.loads(line)["prefill_tokens"] for line in lines)
        full = (len(prompt) - 1) // BLOCK * BLOCK
        assert prefill == len(prompt) + 7 * (len(prompt) - full)  # 27 + 7 * 3, not 8 * 27
        return events, [tokens for tokens, _ in outs]

    events, single_outputs = asyncio.run(main())
    per = _by_index(events)
    assert sorted(per) == list(range(8))
    reasons = set()
    for i, evs in per.items():
        tokens = [t for e in evs for t in e.token_ids]
        expected = reference_output(prompt, completion_seed(77, i), MAX_NEW, VOCAB, {3}, **EOS)
        assert tokens == expected == single_outputs[i]
        last = evs[-1]
        assert all(e.finish_reason is None for e in evs[:-1]) and last.finish_reason is not None
        reasons.add(last.finish_reason)
        if last.finish_reason is FinishReason.STOP:
            assert last.matched_stop_token == 3 and tokens[-1] == 3
        assert last.num_output_tokens == len(tokens) and last.num_prompt_tokens == len(prompt)
        # completion 0 computed the prompt; the others found its full blocks cached
        assert last.num_cached_tokens == (0 if i == 0 else (len(prompt) - 1) // BLOCK * BLOCK)
    assert reasons == {FinishReason.STOP, FinishReason.LENGTH}  # each its own
    assert len({tuple(t for e in evs for t in e.token_ids) for evs in per.values()}) == 8


def test_cancel_ends_every_completion_and_frees_every_block() -> None:
    """Closing the stream of an n = 6 request mid-generation aborts all six; no block leaks."""
    worker = FakeWorkerConfig(step_delay_s=0.002)
    req = _request("cancel", list(range(1, 12)), 6, max_new=400)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
            stream = engine.submit(req)
            seen: set[int] = set()
            async for event in stream:
                seen.add(event.index)
                if len(seen) == 6:
                    break
            await stream.aclose()
            await _settled(engine)
            assert engine.abort("cancel") is False
            assert handle.worker.violations == []

    asyncio.run(main())


def test_abort_and_finish_of_one_completion() -> None:
    """finish(request_id, i) ends completion i alone (STOP); abort(request_id) ends the rest."""
    worker = FakeWorkerConfig(step_delay_s=0.002)
    req = _request("part", list(range(2, 9)), 4, max_new=400)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, _):
            stream = engine.submit(req)
            events: list[OutputEvent] = []
            async for event in stream:
                events.append(event)
                if len(events) == 6:
                    engine.finish("part", index=2)
                if event.index == 2 and event.finish_reason is not None:
                    assert engine.abort("part") is True
            per = _by_index(events)
            assert per[2][-1].finish_reason is FinishReason.STOP
            assert {per[i][-1].finish_reason for i in (0, 1, 3)} == {FinishReason.ABORT}
            await _settled(engine)

    asyncio.run(main())


def test_preemption_keeps_every_completion_exact() -> None:
    """A pool too small for 8 completions at once: preempted completions resume, none lost or
    repeated, every output equal to its single request's."""
    worker = FakeWorkerConfig(num_blocks=20, block_size=4, max_context=64)
    prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13]
    req = _request("tight", prompt, 8, max_new=30)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
            _, events = await collect(engine.submit(req))
            assert engine.stats().num_preemptions > 0
            assert handle.worker.violations == []
            await _settled(engine)
        per = _by_index(events)
        for i in range(8):
            tokens = [t for e in per[i] for t in e.token_ids]
            assert tokens == reference_output(prompt, completion_seed(77, i), 30, VOCAB, {3})

    asyncio.run(main())


def test_n_out_of_range_is_refused() -> None:
    """n = 0 and n = 65 are ValueError (INVALID_ARGUMENT) and change nothing."""

    async def main() -> None:
        async with engine_on_fake_workers() as (engine, _):
            for n in (0, 65):
                with pytest.raises(ValueError, match="n must be in"):
                    engine.submit(_request("bad", [1, 2, 3], n))
            assert engine.stats().waiting == 0 and engine.abort("bad") is False

    asyncio.run(main())


def test_worker_loss_requeues_each_completion_exactly() -> None:
    """The step stream breaks mid-generation: each completion is re-sent with its output so far
    and ends with its exact output (nothing lost or repeated)."""
    worker = FakeWorkerConfig(fail_at_step=5, max_failures=1)
    prompt = list(range(3, 17))
    req = _request("lost", prompt, 4, max_new=25)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
            _, events = await collect(engine.submit(req))
            assert engine._loops[0].num_losses == 1 and handle.worker.violations == []
            await _settled(engine)
        per = _by_index(events)
        for i in range(4):
            assert not per[i][-1].error
            tokens = [t for e in per[i] for t in e.token_ids]
            assert tokens == reference_output(prompt, completion_seed(77, i), 25, VOCAB, {3})

    asyncio.run(main())

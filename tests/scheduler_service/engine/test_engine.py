"""Engine over fake workers: every output equals the fake model's direct computation."""

from __future__ import annotations

import asyncio

import pytest
from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.errors import ResourceExhaustedError
from yaie.scheduler_service.engine.request import FinishReason, GenerationRequest, SamplingConfig

VOCAB = FakeWorkerConfig().vocab_size


def _request(i: int, prompt: list[int], max_new: int = 12, **kw) -> GenerationRequest:
    return GenerationRequest(f"r{i}", prompt, SamplingConfig(seed=1000 + i), max_new, **kw)


def _expected(req: GenerationRequest, **kw) -> list[int]:
    return reference_output(
        req.prompt_ids,
        req.sampling.seed,
        req.max_new_tokens,
        VOCAB,
        req.stop_token_ids,
        req.min_new_tokens,
        **kw,
    )


def _ragged(n: int) -> list[GenerationRequest]:
    prompts = [[(i * 31 + j * 7) % VOCAB for j in range(1 + 5 * i)] for i in range(n)]
    return [_request(i, prompt, 3 + 2 * i) for i, prompt in enumerate(prompts)]


@pytest.mark.parametrize("overlap,depth", [(True, 2), (True, 1), (True, 3), (False, 1)])
@pytest.mark.parametrize("budget", [2048, 8])
def test_ragged_batch_matches_reference(overlap: bool, depth: int, budget: int) -> None:
    """Ragged prompts and lengths, with and without overlap (1-3 plans ahead) and chunked
    prefill: exact output."""
    config = SchedulerConfig(
        max_num_batched_tokens=budget,
        prefill_chunk_size=min(budget, 5),
        enable_overlap=overlap,
        overlap_depth=depth,
    )

    async def main() -> None:
        async with engine_on_fake_workers(config) as (engine, (handle,)):
            reqs = _ragged(10)
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            for req, (tokens, events) in zip(reqs, results, strict=True):
                assert tokens == _expected(req)
                assert events[-1].finish_reason is FinishReason.LENGTH
                assert events[-1].num_output_tokens == req.max_new_tokens
                assert all(e.finish_reason is None for e in events[:-1])
            assert handle.worker.violations == []
            assert engine.stats().workers[0].used_blocks == 0
            engine._loops[0].kv.check_integrity()

    asyncio.run(main())


def test_shared_prefix_is_cached_and_output_unchanged() -> None:
    """A second request sharing a 64-token prefix reports >= 48 cached tokens; same output as
    with the prefix cache off."""
    shared = [(j * 13 + 5) % VOCAB for j in range(64)]
    first = _request(0, shared + [1, 2, 3], 10)
    second = _request(1, shared + [4, 5, 6, 7, 8], 10)

    async def run(cache: bool) -> tuple[list[int], int, float]:
        config = SchedulerConfig(enable_prefix_cache=cache)
        async with engine_on_fake_workers(config) as (engine, (handle,)):
            await collect(engine.submit(first))
            tokens, events = await collect(engine.submit(second))
            assert handle.worker.violations == []
            return tokens, events[-1].num_cached_tokens, engine.stats().workers[0].cache_hit_rate

    cached_out, cached, hit_rate = asyncio.run(run(True))
    plain_out, plain_cached, _ = asyncio.run(run(False))
    assert cached >= 48 and plain_cached == 0
    assert cached_out == plain_out == _expected(second)
    assert hit_rate == pytest.approx(cached / (len(first.prompt_ids) + len(second.prompt_ids)))


def test_stop_token_after_min_new_tokens() -> None:
    """A stop token finishes with STOP (kept, matched_stop_token set) only past min_new_tokens."""
    worker = FakeWorkerConfig(eos_token_id=3, eos_period=4)
    eos = {"eos_token_id": 3, "eos_period": 4}
    reqs = [
        _request(i, [i + 1, 9, 9], 40, stop_token_ids=frozenset({3}), min_new_tokens=m)
        for i, m in enumerate([0, 0, 2, 5, 9, 0, 1, 3])
    ]

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, _):
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
        stops = 0
        for req, (tokens, events) in zip(reqs, results, strict=True):
            assert tokens == _expected(req, **eos)
            last = events[-1]
            if tokens[-1] == 3 and len(tokens) > req.min_new_tokens:
                stops += 1
                assert last.finish_reason is FinishReason.STOP and last.matched_stop_token == 3
                assert 3 not in tokens[req.min_new_tokens : -1]
            else:
                assert last.finish_reason is FinishReason.LENGTH and len(tokens) == 40
        assert stops >= 5

    asyncio.run(main())


def test_logprobs_are_returned_per_token() -> None:
    """return_logprobs / top_logprobs: one TokenLogprobs per output token, with n alternatives."""
    sampling = SamplingConfig(seed=5, top_logprobs=3, return_logprobs=True)
    req = GenerationRequest("lp", [4, 5, 6], sampling, 6)
    plain = _request(1, [7, 8], 6)

    async def main() -> None:
        async with engine_on_fake_workers() as (engine, _):
            (tokens, events), (_, plain_events) = await asyncio.gather(
                collect(engine.submit(req)), collect(engine.submit(plain))
            )
        logprobs = [lp for e in events for lp in e.logprobs]
        assert [lp.token_id for lp in logprobs] == tokens
        assert all(len(lp.top) == 3 and lp.top[0][0] == lp.token_id for lp in logprobs)
        assert all(not e.logprobs for e in plain_events)

    asyncio.run(main())


def test_admissibility_errors() -> None:
    """Bad requests raise ValueError; requests that can never fit raise ResourceExhaustedError."""
    worker = FakeWorkerConfig(num_blocks=8, block_size=4, max_context=64, kv_cache_dtype="fp8_e4m3")

    async def main() -> None:
        config = SchedulerConfig(max_queue_size=2)
        async with engine_on_fake_workers(config, worker) as (engine, _):
            assert engine.model_info.max_context == 64 and engine.model_info.num_workers == 1
            assert engine.model_info.kv_cache_dtype == "fp8_e4m3"  # Describe's, passed on
            with pytest.raises(ValueError):
                engine.check_admissible(_request(0, [1, VOCAB]))
            with pytest.raises(ValueError):
                engine.check_admissible(_request(0, []))
            with pytest.raises(ValueError):
                engine.check_admissible(_request(0, [1] * 60, 5))  # 65 > max_context
            with pytest.raises(ResourceExhaustedError):
                engine.check_admissible(_request(0, [1] * 30, 3))  # 33 tokens > 8 blocks of 4
            first = engine.submit(_request(0, [1, 2], 3))
            with pytest.raises(ValueError):
                engine.submit(_request(0, [1, 2], 3))  # request_id live
            engine.submit(_request(1, [1, 2], 3))
            with pytest.raises(ResourceExhaustedError):
                engine.submit(_request(2, [1, 2], 3))  # queue full
            await collect(first)

    asyncio.run(main())


def test_abort_is_idempotent_and_finish_stops() -> None:
    """abort() twice: one ABORT, blocks freed, True while live and False after; finish() ends
    the request with STOP; an unknown id is not found."""
    worker = FakeWorkerConfig(step_delay_s=0.005)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
            a = engine.submit(_request(0, [1, 2, 3], 400))
            b = engine.submit(_request(1, [4, 5, 6], 400))
            first_a, first_b = await anext(a), await anext(b)
            assert engine.abort("r0") and engine.abort("r0")
            engine.finish("r1")
            tokens_a, events_a = await collect(a)
            tokens_b, events_b = await collect(b)
            assert events_a[-1].finish_reason is FinishReason.ABORT and events_a[-1].error is None
            assert events_b[-1].finish_reason is FinishReason.STOP
            out_a = first_a.token_ids + tokens_a
            assert out_a == _expected(_request(0, [1, 2, 3], 400))[: len(out_a)]
            assert len(first_b.token_ids + tokens_b) < 400
            assert not engine.abort("r0") and not engine.abort("nope")
            for _ in range(50):  # blocks come back once the plans in flight are read
                if engine.stats().workers[0].used_blocks == 0:
                    break
                await asyncio.sleep(0.01)
            assert engine.stats().workers[0].used_blocks == 0
            assert handle.worker.violations == []

    asyncio.run(main())


@pytest.mark.parametrize("overlap", [True, False])
def test_concurrent_prompts_share_a_prefix_still_being_computed(overlap: bool) -> None:
    """Requests sharing a 64-token prefix arrive together, under a small step budget: the later
    ones wait for the first one's prefill chunks and reuse them (>= 48 cached tokens each)."""
    shared = [(j * 17 + 3) % VOCAB for j in range(64)]
    reqs = [_request(i, shared + [i, i + 1], 6) for i in range(4)]
    config = SchedulerConfig(max_num_batched_tokens=16, enable_overlap=overlap)

    async def main() -> None:
        async with engine_on_fake_workers(config) as (engine, (handle,)):
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            assert [t for t, _ in results] == [_expected(r) for r in reqs]
            cached = sorted(events[-1].num_cached_tokens for _, events in results)
            assert cached[0] == 0 and all(c >= 48 for c in cached[1:])
            assert handle.worker.violations == []
            assert engine.stats().workers[0].used_blocks == 0
            engine._loops[0].kv.check_integrity()

    asyncio.run(main())


def test_abort_of_a_waiting_request() -> None:
    """A request aborted while still queued ends with ABORT and no token; the others finish."""
    worker = FakeWorkerConfig(step_delay_s=0.002)

    async def main() -> None:
        config = SchedulerConfig(max_running_requests=1)
        async with engine_on_fake_workers(config, worker) as (engine, _):
            first = engine.submit(_request(0, [1, 2, 3], 20))
            queued = engine.submit(_request(1, [4, 5, 6], 20))
            await anext(first)
            assert engine.stats().waiting == 1 and engine.abort("r1")
            tokens, events = await collect(queued)
            assert tokens == [] and events[-1].finish_reason is FinishReason.ABORT
            assert engine.stats().waiting == 0
            rest, _ = await collect(first)
            assert len(rest) == 19

    asyncio.run(main())

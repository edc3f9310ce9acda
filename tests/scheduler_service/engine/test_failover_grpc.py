"""Robustness on fake workers: client deadlines free a request's blocks, drain lets streams end
within the grace period then cancels the rest, and a slow reader costs one coalesced event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output
from served_stack import public_stub

from yaie.cli.models.random_model import write_tokenizer
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.errors import UnavailableError
from yaie.scheduler_service.engine.request import FinishReason, GenerationRequest, SamplingConfig
from yaie.v1 import generation_pb2 as pb

VOCAB = 700  # within the built-in tokenizer's 768 tokens


def _request(name: str, max_new: int) -> GenerationRequest:
    return GenerationRequest(name, [5, 6, len(name)], SamplingConfig(seed=3), max_new)


def _expected(req: GenerationRequest) -> list[int]:
    return reference_output(req.prompt_ids, req.sampling.seed, req.max_new_tokens, VOCAB)


def test_client_deadline_aborts_the_request_and_frees_its_blocks(tmp_path: Path) -> None:
    """A Generate past its gRPC deadline ends DEADLINE_EXCEEDED; the engine aborts it and its
    blocks are free."""
    write_tokenizer(tmp_path)
    tokenizer = Tokenizer(tmp_path)
    worker = FakeWorkerConfig(vocab_size=VOCAB, step_delay_s=0.02)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, _):
            async with public_stub(engine, tokenizer) as stub:
                request = pb.GenerateRequest(
                    token_ids=pb.TokenIds(ids=[1, 2, 3]),
                    stopping=pb.StoppingCriteria(max_new_tokens=400, ignore_eos=True),
                )
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    async for _ in stub.Generate(request, timeout=0.3):
                        pass
                assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                for _ in range(200):
                    stats = engine.stats()
                    if stats.running == 0 and stats.workers[0].used_blocks == 0:
                        break
                    await asyncio.sleep(0.01)
                assert stats.running == 0 and stats.workers[0].used_blocks == 0
                assert stats.completed_requests == 1

    asyncio.run(main())


def test_drain_finishes_short_streams_and_cancels_the_rest() -> None:
    """drain(): new requests are UNAVAILABLE at once; a stream that ends within
    drain_timeout_s completes exactly, a longer one ends ABORT with an error."""
    config = SchedulerConfig(drain_timeout_s=0.4)
    worker = FakeWorkerConfig(vocab_size=VOCAB, step_delay_s=0.01)

    async def main() -> None:
        async with engine_on_fake_workers(config, worker) as (engine, _):
            short, long = _request("short", 5), _request("long", 400)
            outputs = asyncio.gather(collect(engine.submit(short)), collect(engine.submit(long)))
            await asyncio.sleep(0.02)
            drain = asyncio.ensure_future(engine.drain())
            await asyncio.sleep(0)
            with pytest.raises(UnavailableError):
                engine.submit(_request("late", 3))
            assert not engine.ready and not engine.serving
            assert await drain == 1
            (short_tokens, short_events), (long_tokens, long_events) = await outputs
            assert short_tokens == _expected(short)
            assert short_events[-1].finish_reason is FinishReason.LENGTH
            assert long_events[-1].finish_reason is FinishReason.ABORT and long_events[-1].error
            assert 0 < len(long_tokens) < 400 and long_tokens == _expected(long)[: len(long_tokens)]

    asyncio.run(main())


def test_slow_reader_gets_its_undelivered_tokens_in_one_event() -> None:
    """A stream not read while its request runs holds one pending event (not one per token):
    read afterwards, it yields every token once, in order."""

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), FakeWorkerConfig(VOCAB)) as (
            engine,
            _,
        ):
            req = _request("slow", 40)
            events = engine.submit(req)
            for _ in range(500):
                if engine.stats().completed_requests == 1:
                    break
                await asyncio.sleep(0.01)
            tokens, seen = await collect(events)
            assert tokens == _expected(req) and len(seen) == 1
            assert seen[0].finish_reason is FinishReason.LENGTH

    asyncio.run(main())

"""The whole scheduler over gRPC: Generation service -> Engine -> fake worker. The issue's
end-to-end checks: shared-prefix usage.cached_tokens, 32 streams with a quarter cancelled, and
GetServerStats showing no block held afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_worker import FakeWorkerConfig, engine_on_fake_workers, reference_output
from served_stack import public_stub

from yaie.cli.models.random_model import write_tokenizer
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.config import SchedulerConfig
from yaie.v1 import generation_pb2 as pb

VOCAB = 700  # within the built-in tokenizer's 768 tokens


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path: Path = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(path)
    return Tokenizer(path)


def _generate_request(name: str, prompt: list[int], max_new: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=name,
        token_ids=pb.TokenIds(ids=prompt),
        sampling=pb.SamplingParams(seed=len(name) + prompt[0]),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True),
    )


def _expected(req: pb.GenerateRequest) -> list[int]:
    ids = list(req.token_ids.ids)
    return reference_output(ids, req.sampling.seed, req.stopping.max_new_tokens, VOCAB)


async def _served_stack(tokenizer: Tokenizer, body, worker: FakeWorkerConfig) -> None:
    """Runs body(stub, fake worker) against the full stack on 127.0.0.1; stops everything."""
    async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
        async with public_stub(engine, tokenizer) as stub:
            await body(stub, handle.worker)


async def _tokens(stub, req: pb.GenerateRequest) -> tuple[list[int], pb.GenerateResponse]:
    tokens: list[int] = []
    last = None
    async for frame in stub.Generate(req):
        tokens += frame.token_ids
        last = frame
    return tokens, last


async def _wait_idle(stub) -> pb.ServerStats:
    for _ in range(100):
        stats = await stub.GetServerStats(pb.GetServerStatsRequest())
        if stats.running == 0 and stats.waiting == 0:
            break
        await asyncio.sleep(0.01)
    return stats


def test_grpc_shared_prefix_reports_cached_tokens(tokenizer: Tokenizer) -> None:
    """Two requests sharing a 64-token prefix: the second's usage.cached_tokens >= 48, its
    output exact; afterwards GetServerStats shows no block held."""
    shared = [(j * 7 + 11) % VOCAB for j in range(64)]
    first = _generate_request("first", shared + [1, 2], 8)
    second = _generate_request("second", shared + [3, 4, 5], 8)

    async def body(stub, worker) -> None:
        await _tokens(stub, first)
        tokens, last = await _tokens(stub, second)
        assert tokens == _expected(second)
        assert last.usage.cached_tokens >= 48 and last.usage.prompt_tokens == 67
        assert last.finish_reason == pb.FINISH_REASON_LENGTH
        stats = await _wait_idle(stub)
        assert stats.workers[0].used_blocks == 0 and stats.workers[0].cached_blocks > 0
        assert worker.violations == []

    asyncio.run(_served_stack(tokenizer, body, FakeWorkerConfig(vocab_size=VOCAB)))


def test_grpc_32_streams_with_a_quarter_cancelled(tokenizer: Tokenizer) -> None:
    """32 concurrent Generate streams, 8 cancelled by the client (4) or by Abort (4) mid-way:
    every survivor completes with all its tokens; no block is held afterwards."""
    prompts = [[(i * 5 + j) % VOCAB for j in range(3 + i)] for i in range(32)]
    reqs = [_generate_request(f"g{i}", prompt, 20) for i, prompt in enumerate(prompts)]

    async def one(stub, i: int) -> list[int] | None:
        call = stub.Generate(reqs[i])
        if i % 4:
            tokens = [t async for frame in call for t in frame.token_ids]
            return tokens
        seen = 0
        async for frame in call:
            seen += len(frame.token_ids)
            if seen >= 3:
                break
        if i % 8:
            call.cancel()
        else:
            reply = await stub.Abort(pb.AbortRequest(request_id=reqs[i].request_id))
            assert reply.found
            call.cancel()
        return None

    async def body(stub, worker) -> None:
        outputs = await asyncio.gather(*(one(stub, i) for i in range(32)))
        for req, out in zip(reqs, outputs, strict=True):
            assert out is None or out == _expected(req)
        stats = await _wait_idle(stub)
        assert stats.running == 0 and stats.workers[0].used_blocks == 0
        assert worker.violations == []

    worker = FakeWorkerConfig(vocab_size=VOCAB, num_blocks=128, step_delay_s=0.001)
    asyncio.run(_served_stack(tokenizer, body, worker))

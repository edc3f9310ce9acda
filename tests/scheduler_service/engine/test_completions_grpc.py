"""GenerateRequest.n through the public gRPC service (Engine over a fake worker): frames carry
their completion's index, each completion has its own stop strings, finish reason and usage;
bad n is INVALID_ARGUMENT; Abort ends every completion and frees every block."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fake_worker import FakeWorkerConfig, engine_on_fake_workers, reference_output
from served_stack import public_stub

from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.request import completion_seed
from yaie.v1 import generation_pb2 as pb

VOCAB = 700  # within the built-in tokenizer's 768 tokens
BLOCK = FakeWorkerConfig().block_size
PROMPT = [(j * 7 + 11) % VOCAB for j in range(5 * BLOCK + 2)]


def _request(rid: str, n: int, max_new: int = 12, **kw) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=rid,
        token_ids=pb.TokenIds(ids=PROMPT),
        sampling=pb.SamplingParams(seed=2024),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True, **kw),
        n=n,
    )


def _reference(i: int, max_new: int = 12) -> list[int]:
    return reference_output(PROMPT, completion_seed(2024, i), max_new, VOCAB)


async def _served(tokenizer: Tokenizer, body, worker: FakeWorkerConfig | None = None) -> None:
    worker = worker or FakeWorkerConfig(vocab_size=VOCAB)
    async with engine_on_fake_workers(SchedulerConfig(), worker) as (engine, (handle,)):
        async with public_stub(engine, tokenizer) as stub:
            await body(stub)
            for _ in range(300):
                stats = await stub.GetServerStats(pb.GetServerStatsRequest())
                if stats.running == 0 and stats.waiting == 0:
                    break
                await asyncio.sleep(0.01)
            assert stats.running == 0 and stats.workers[0].used_blocks == 0
            assert handle.worker.violations == []


def _by_index(frames: list[pb.GenerateResponse]) -> dict[int, list[pb.GenerateResponse]]:
    out: dict[int, list[pb.GenerateResponse]] = {}
    for frame in frames:
        out.setdefault(frame.index, []).append(frame)
    return out


def test_n_completions_stream_with_their_index_usage_and_exact_tokens(tokenizer) -> None:
    """n = 8: eight indexed streams, each the single request with its derived seed; the
    completions after the first report the prompt's full blocks as cached_tokens."""

    async def body(stub) -> None:
        frames = [frame async for frame in stub.Generate(_request("eight", 8))]
        per = _by_index(frames)
        assert sorted(per) == list(range(8))
        for i, mine in per.items():
            assert [t for f in mine for t in f.token_ids] == _reference(i)
            assert all(f.finish_reason == pb.FINISH_REASON_UNSPECIFIED for f in mine[:-1])
            last = mine[-1]
            assert last.finish_reason == pb.FINISH_REASON_LENGTH and last.request_id == "eight"
            assert last.usage.prompt_tokens == len(PROMPT) and last.usage.completion_tokens == 12
            full = (len(PROMPT) - 1) // BLOCK * BLOCK
            assert last.usage.cached_tokens == (0 if i == 0 else full)
        single = pb.GenerateRequest()
        single.CopyFrom(_request("one", 1))
        single.sampling.seed = completion_seed(2024, 5)
        tokens = [t async for f in stub.Generate(single) for t in f.token_ids]
        assert tokens == _reference(5)

    asyncio.run(_served(tokenizer, body))


def test_each_completion_has_its_own_stop_string(tokenizer: Tokenizer) -> None:
    """A stop string found in some completions' text ends those (STOP, matched_stop, the text
    cut before it); the others run to their length: each as its single request does."""
    text = tokenizer.decode(_reference(1, 16))
    stop = next(
        text[k : k + 2]
        for k in range(4, len(text) - 2)
        if text[k : k + 2].isascii() and text[k : k + 2].strip() and text[k : k + 2] not in text[:k]
    )

    async def body(stub) -> None:
        request = _request("stops", 4, 16, stop=[stop])
        per = _by_index([frame async for frame in stub.Generate(request)])
        assert per[1][-1].finish_reason == pb.FINISH_REASON_STOP
        assert per[1][-1].matched_stop == stop
        for i in range(4):
            single = pb.GenerateRequest()
            single.CopyFrom(request)
            single.request_id, single.n = f"stop{i}", 1
            single.sampling.seed = completion_seed(2024, i)
            alone = [frame async for frame in stub.Generate(single)]
            for key in ("text", "token_ids"):
                assert [x for f in per[i] for x in getattr(f, key)] == [
                    x for f in alone for x in getattr(f, key)
                ]
            assert per[i][-1].finish_reason == alone[-1].finish_reason
            assert per[i][-1].usage.completion_tokens == alone[-1].usage.completion_tokens

    asyncio.run(_served(tokenizer, body))


def test_single_frame_gives_one_frame_per_completion(tokenizer: Tokenizer) -> None:
    async def body(stub) -> None:
        request = _request("whole", 3)
        request.output.single_frame = True
        frames = [frame async for frame in stub.Generate(request)]
        assert [f.index for f in frames] == [0, 1, 2]
        for i, frame in enumerate(frames):
            assert list(frame.token_ids) == _reference(i)
            assert frame.finish_reason == pb.FINISH_REASON_LENGTH

    asyncio.run(_served(tokenizer, body))


def test_n_zero_is_one_and_n_above_64_is_invalid(tokenizer: Tokenizer) -> None:
    async def body(stub) -> None:
        frames = [frame async for frame in stub.Generate(_request("zero", 0))]
        assert {f.index for f in frames} == {0}
        assert [t for f in frames for t in f.token_ids] == _reference(0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [frame async for frame in stub.Generate(_request("many", 65))]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "n must be at most 64" in info.value.details()

    asyncio.run(_served(tokenizer, body))


def test_abort_ends_every_completion(tokenizer: Tokenizer) -> None:
    """Abort by request_id mid-stream: every completion's stream ends with ABORT; no block is
    held afterwards (checked by _served)."""

    async def body(stub) -> None:
        call = stub.Generate(_request("stopme", 5, 400))
        frames: list[pb.GenerateResponse] = []
        async for frame in call:
            frames.append(frame)
            if len(frames) == 8:
                assert (await stub.Abort(pb.AbortRequest(request_id="stopme"))).found
        per = _by_index(frames)
        assert sorted(per) == list(range(5))
        assert {mine[-1].finish_reason for mine in per.values()} == {pb.FINISH_REASON_ABORT}

    worker = FakeWorkerConfig(vocab_size=VOCAB, step_delay_s=0.002)
    asyncio.run(_served(tokenizer, body, worker))

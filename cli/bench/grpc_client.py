"""`yaie bench --backend yaie` (the default): the workload sent over yaie.v1 gRPC, one Generate
stream per request on one channel, timed per frame.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from yaie.cli import client_security
from yaie.cli.bench import datasets as ds
from yaie.cli.bench.metrics import RequestResult
from yaie.cli.bench.openai_client import Send
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

_DONE_OK = (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {api_key}"),) if api_key else None


async def model_info(target: str, api_key: str | None, tls: object) -> pb.ModelInfo:
    async with client_security.open_aio_channel(target, tls) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return await stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=call_metadata(api_key))


def to_proto(
    request: ds.BenchRequest,
    request_id: str,
    temperature: float,
    single_frame: bool,
    json_schema: str | None = None,
    n: int = 1,
) -> pb.GenerateRequest:
    """n: completions of the prompt (GenerateRequest.n)."""
    response_format = pb.ResponseFormat(json_schema=json_schema) if json_schema else None
    return pb.GenerateRequest(
        request_id=request_id,
        token_ids=pb.TokenIds(ids=request.prompt_ids),
        sampling=pb.SamplingParams(temperature=temperature),
        stopping=pb.StoppingCriteria(max_new_tokens=request.output_len, ignore_eos=True),
        output=pb.OutputOptions(single_frame=single_frame),
        response_format=response_format,
        n=n,
    )


async def _one(
    stub: generation_pb2_grpc.GenerationStub,
    message: pb.GenerateRequest,
    results: list[RequestResult],
    metadata: tuple[tuple[str, str], ...] | None,
) -> None:
    """Streams one request into results, one per completion (frame.index), each timed from
    the call's start (the hot loop: a clock read and a length per frame; the ids themselves
    only where a result's output_ids asks for them)."""
    perf_counter = time.perf_counter
    start = perf_counter()
    last = [start] * len(results)
    finals: list[pb.GenerateResponse | None] = [None] * len(results)
    try:
        async for frame in stub.Generate(message, metadata=metadata):
            now = perf_counter()
            index, num_tokens = frame.index, len(frame.token_ids)
            result = results[index]
            if num_tokens:
                if result.output_ids is not None:
                    result.output_ids.extend(frame.token_ids)
                if result.output_tokens:
                    result.itls.append(now - last[index])
                else:
                    result.ttft = now - start
                last[index] = now
                result.output_tokens += num_tokens
            if frame.finish_reason:
                finals[index], last[index] = frame, now
    except grpc.aio.AioRpcError as error:
        for result in results:
            result.error = f"{error.code().name}: {error.details()}"
        return
    for result, final, end in zip(results, finals, last, strict=True):
        result.latency = end - start
        if final is None or final.finish_reason not in _DONE_OK:
            ended = final is not None and final.error
            result.error = final.error if ended else "stream ended early"
            continue
        usage = final.usage
        result.prompt_tokens, result.cached_tokens = usage.prompt_tokens, usage.cached_tokens
        result.completion_tokens, result.ok = usage.completion_tokens, True


@asynccontextmanager
async def session(target: str, api_key: str | None, tls: object) -> AsyncIterator[Send]:
    """send(message, results) over one channel, once it is ready: one result per completion."""
    metadata = call_metadata(api_key)
    async with client_security.open_aio_channel(target, tls) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        await channel.channel_ready()

        async def send(message: pb.GenerateRequest, results: list[RequestResult]) -> None:
            await _one(stub, message, results, metadata)

        yield send

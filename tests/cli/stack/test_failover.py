"""`yaie serve --workers 2` losing a worker (real processes, tiny random Llama, CPU).

One stack serves the tests of this file in order: SIGKILL of a worker while 16 streams run
(greedy and seeded; all complete, each equal to the same request run before the failure; the
worker is restarted and rejoins), SIGSTOP of a worker (noticed within --step-timeout, its
streams finish on the other), then SIGTERM with streams in flight (they complete, exit code 0).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

STEP_TIMEOUT_S = 3.0
HEALTH_INTERVAL_S = 0.5
NUM_STREAMS = 16
NUM_NEW_TOKENS = 40
# The drained streams must still run when the late request arrives (~0.3 s after SIGTERM): the
# CPU worker runs a tiny model's step in a few ms, so 120 tokens could finish first.
DRAIN_NEW_TOKENS = 600


@pytest.fixture(scope="module")
def stack(model_dirs, tools) -> Iterator:
    with tools.running_stack(
        model_dirs["LlamaForCausalLM"],
        "--workers",
        "2",
        "--step-timeout",
        str(STEP_TIMEOUT_S),
        "--health-interval",
        str(HEALTH_INTERVAL_S),
        "--drain-timeout",
        "60",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def baseline(stack) -> list[list[int]]:
    """Each stream's tokens with no failure."""
    return [tokens for tokens, _ in asyncio.run(_streams(stack.target, "base"))]


def _request(name: str, i: int, max_new: int = NUM_NEW_TOKENS) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"{name}{i}",
        token_ids=pb.TokenIds(ids=[(i * 41 + j * 13 + 7) % 700 for j in range(12 + i)]),
        # Greedy, and every fourth seeded sampling (its RNG counter is the token position).
        sampling=pb.SamplingParams(temperature=0.8 if i % 4 == 3 else 0.0, seed=i),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True),
    )


async def _streams(
    target: str, name: str, during=None, count: int = NUM_STREAMS, max_new: int = NUM_NEW_TOKENS
):
    """Runs count greedy streams at once; once every stream has a token, awaits during().
    Returns each stream's tokens and finish reason."""
    started = asyncio.Event()
    seen: set[int] = set()

    async def one(stub, i: int) -> tuple[list[int], int]:
        tokens, reason = [], 0
        async for frame in stub.Generate(_request(name, i, max_new)):
            tokens += frame.token_ids
            reason = frame.finish_reason
            seen.add(i)
            if len(seen) == count:
                started.set()
        return tokens, reason

    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        runs = asyncio.gather(*(one(stub, i) for i in range(count)))
        if during is not None:
            await asyncio.wait_for(started.wait(), 60)
            await during()
        return await asyncio.wait_for(runs, 120)


def _workers_healthy(target: str) -> list[bool]:
    with grpc.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return [w.healthy for w in stub.GetServerStats(pb.GetServerStatsRequest()).workers]


def _wait_for(condition, timeout_s: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - start


def test_sigkill_of_a_worker_with_16_streams_in_flight(stack, baseline, tools) -> None:
    """All 16 streams (12 greedy, 4 seeded sampling) complete, each equal to the same request
    before the failure; the killed worker is restarted and rejoins."""
    workers = tools.child_pids(stack.process.pid)
    assert len(workers) == 2

    async def kill() -> None:
        os.kill(workers[0], signal.SIGKILL)
        await asyncio.to_thread(_wait_for, lambda: False in _workers_healthy(stack.target), 10)

    outputs = asyncio.run(_streams(stack.target, "kill", kill))
    assert [reason for _, reason in outputs] == [pb.FINISH_REASON_LENGTH] * NUM_STREAMS
    assert [tokens for tokens, _ in outputs] == baseline
    _wait_for(lambda: _workers_healthy(stack.target) == [True, True], 90)


def test_sigstop_of_a_worker_is_noticed_within_the_step_timeout(stack, baseline, tools) -> None:
    """A stopped worker is marked unhealthy within --step-timeout (+ one health interval);
    every stream completes with its exact output on the other worker."""
    _wait_for(lambda: _workers_healthy(stack.target) == [True, True], 90)
    victim = tools.child_pids(stack.process.pid)[0]
    noticed: list[float] = []

    async def stop() -> None:
        os.kill(victim, signal.SIGSTOP)
        took = await asyncio.to_thread(
            _wait_for, lambda: False in _workers_healthy(stack.target), 30
        )
        noticed.append(took)

    try:
        outputs = asyncio.run(_streams(stack.target, "stop", stop))
    finally:
        os.kill(victim, signal.SIGCONT)
        os.kill(victim, signal.SIGKILL)  # its old step stream must not run on (it is restarted)
    assert noticed and noticed[0] < STEP_TIMEOUT_S + HEALTH_INTERVAL_S + 2.0
    assert [tokens for tokens, _ in outputs] == baseline


def test_sigterm_drains_streams_in_flight_and_exits_0(stack, tools) -> None:
    """SIGTERM: health NOT_SERVING at once, new requests UNAVAILABLE, streams in flight still
    complete (within --drain-timeout); exit code 0 and no worker left."""
    _wait_for(lambda: True in _workers_healthy(stack.target), 90)
    workers = tools.child_pids(stack.process.pid)
    checks: dict[str, object] = {}

    async def terminate() -> None:
        stack.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with grpc.aio.insecure_channel(stack.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            checks["health"] = reply.status
            stub = generation_pb2_grpc.GenerationStub(channel)
            try:
                await stub.Generate(_request("late", 0, 2)).read()
            except grpc.aio.AioRpcError as error:
                checks["late"] = error.code()

    outputs = asyncio.run(
        _streams(stack.target, "drain", terminate, count=4, max_new=DRAIN_NEW_TOKENS)
    )
    assert [reason for _, reason in outputs] == [pb.FINISH_REASON_LENGTH] * 4
    assert all(len(tokens) == DRAIN_NEW_TOKENS for tokens, _ in outputs)
    assert checks == {
        "health": health_pb2.HealthCheckResponse.NOT_SERVING,
        "late": grpc.StatusCode.UNAVAILABLE,
    }
    assert stack.process.wait(60) == 0
    assert _wait_for(lambda: not any(tools.is_running(pid) for pid in workers), 30) < 30

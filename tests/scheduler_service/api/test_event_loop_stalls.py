"""Large Tokenize, Detokenize and Generate inputs are worked off the scheduler's event loop:
while four of them run, the loop is never late by more than 0.25 s and health checks answer
within 1 s (before, one Detokenize of 1M ids froze every stream and the health service for as
long as it decoded: ~0.3 s each, one after another). Detokenize refuses more ids than the
model's context with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import served_stack
from fake_worker import FakeWorkerConfig
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

MAX_CONTEXT = 1 << 22
NUM_IDS = 1_000_000  # 2 MB on the wire
NUM_CHARS = 400_000
DETOKENIZE_REQUEST = pb.DetokenizeRequest(ids=[i % 700 + 20 for i in range(NUM_IDS)])
DETOKENIZE_REQUEST = DETOKENIZE_REQUEST.SerializeToString()
MAX_LOOP_LAG_S = 0.25
MAX_PROBE_S = 1.0  # a probe with a 1 s timeout must never fail


@pytest.fixture(scope="module")
def stack(tokenizer):
    # A huge context (so the inputs are allowed) over a small KV pool (Generate's prompt is
    # tokenized, then refused as too large for the pool: no step runs it).
    worker = FakeWorkerConfig(vocab_size=768, max_context=MAX_CONTEXT, num_blocks=64)
    with served_stack.served_stack(tokenizer, worker=worker) as stack:
        yield stack


def _stalls(stack: served_stack.ServedStack, work: Callable[[], None]) -> tuple[float, ...]:
    """(most the server's event loop was late, slowest health check answer, work's duration)
    while work ran; the health checks come from another thread of this process."""
    done = threading.Event()
    lags: list[float] = []
    latencies: list[float] = []

    async def watch_loop() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - start - 0.005)

    def probe() -> None:
        with grpc.insecure_channel(stack.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected
            started.set()
            while not done.is_set():
                start = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                latencies.append(time.perf_counter() - start)
                time.sleep(0.01)

    started = threading.Event()
    prober = threading.Thread(target=probe)
    prober.start()
    started.wait(10)
    watcher = asyncio.run_coroutine_threadsafe(watch_loop(), stack.loop)
    start = time.perf_counter()
    try:
        work()
    finally:
        duration = time.perf_counter() - start
        done.set()
        prober.join(30)
        watcher.result(30)
    return max(lags), max(latencies), duration


def _four_at_once(address: str, call: Callable[[generation_pb2_grpc.GenerationStub], None]):
    def work() -> None:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(address, options=options) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            stub.raw_detokenize = channel.unary_unary(
                "/yaie.v1.Generation/Detokenize",
                request_serializer=lambda data: data,
                response_deserializer=pb.DetokenizeResponse.FromString,
            )
            with ThreadPoolExecutor(4) as pool:  # the calls' replies are up to ~6 MB
                for future in [pool.submit(call, stub) for _ in range(4)]:
                    future.result()

    return work


def _detokenize(stub) -> None:
    # Sent as bytes made once: building a message of 2M ids holds this process's GIL (which
    # the server's loop shares here) for ~0.1 s, a stall of the test's own making.
    reply = stub.raw_detokenize(DETOKENIZE_REQUEST, timeout=120)
    assert len(reply.text) > NUM_IDS // 4


def _tokenize(stub) -> None:
    reply = stub.Tokenize(pb.TokenizeRequest(text="hello world, " * (NUM_CHARS // 13)), timeout=120)
    assert len(reply.ids) > NUM_CHARS // 20


def _generate(stub) -> None:
    request = pb.GenerateRequest(
        text="hello world, " * (NUM_CHARS // 13),
        stopping=pb.StoppingCriteria(max_new_tokens=1),
    )
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(request, timeout=120))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # tokenized, then refused


def _chat(stub) -> None:
    content = "hello world, " * (NUM_CHARS // 13)
    request = pb.GenerateRequest(
        messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=content)]),
        stopping=pb.StoppingCriteria(max_new_tokens=1),
    )
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(request, timeout=120))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # templated, tokenized


@pytest.mark.parametrize(
    "call", [_detokenize, _tokenize, _generate, _chat], ids=lambda c: c.__name__.strip("_")
)
def test_large_inputs_do_not_stall_the_event_loop(stack, call) -> None:
    lag, latency, duration = _stalls(stack, _four_at_once(stack.address, call))
    print(f"{call.__name__}: 4 calls in {duration:.2f} s; loop late {lag:.3f} s at most, ")
    print(f"slowest health check {latency:.3f} s")
    assert lag < MAX_LOOP_LAG_S, f"the event loop stalled {lag:.2f} s (work: {duration:.2f} s)"
    assert latency < MAX_PROBE_S


def test_detokenize_refuses_more_ids_than_the_context(tokenizer) -> None:
    worker = FakeWorkerConfig(vocab_size=768, max_context=256, num_blocks=64)
    with served_stack.served_stack(tokenizer, worker=worker) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            assert stub.Detokenize(pb.DetokenizeRequest(ids=[65] * 256), timeout=10).text
            with pytest.raises(grpc.RpcError) as error:
                stub.Detokenize(pb.DetokenizeRequest(ids=[65] * 257), timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "257 token ids" in error.value.details()
            with pytest.raises(grpc.RpcError) as error:
                stub.Detokenize(pb.DetokenizeRequest(ids=[65, 768]), timeout=10)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "token id 768" in error.value.details()

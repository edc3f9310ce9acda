"""Streams whose clients read nothing stop generating (gRPC and the HTTP API alike): once the
transport holds all the client will take, a request's tokens wait in the scheduler, and at
max_stream_backlog of them it is not scheduled until the client reads; what it then reads is
exactly the output it would have had. Before, 20 unread streams generated to their end."""

from __future__ import annotations

import json
import socket
import time

import grpc
import pytest
import served_stack
from fake_worker import FakeWorkerConfig, next_token

from yaie.scheduler_service.api.frontend import Frontend
from yaie.scheduler_service.ops.auth import KeyTable
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

NUM_STREAMS = 20
MAX_NEW = 3000
HTTP_MAX_NEW = 2000
VOCAB = 768


@pytest.fixture(scope="module")
def stack(tokenizer):
    worker = FakeWorkerConfig(
        vocab_size=VOCAB,
        max_context=MAX_NEW + 64,
        num_blocks=16384,
        block_size=16,
        cheap_next_token=True,  # a step costs O(batch): thousands of tokens in seconds
    )
    with served_stack.served_stack(tokenizer, worker=worker) as stack:
        yield stack


def _cheap_reference(prompt: list[int], seed: int, num: int) -> list[int]:
    """The fake worker's output with cheap_next_token (the hash of the last 4 known tokens)."""
    tokens = list(prompt)
    for _ in range(num):
        tokens.append(next_token(tokens[-4:], seed, VOCAB))
    return tokens[len(prompt) :]


def _live_outputs(stack) -> dict[str, int]:
    async def read() -> dict[str, int]:
        return {
            rid: sum(seq.num_output_tokens for seq in group.seqs)
            for rid, group in stack.engine._live.items()
        }

    return stack.call(read())


def _until_idle(stack, num_live: int, timeout_s: float = 30.0) -> None:
    """Returns once num_live requests are live and the worker has taken no step for 0.3 s."""
    worker = stack.workers[0].worker
    deadline = time.monotonic() + timeout_s
    while len(_live_outputs(stack)) < num_live and time.monotonic() < deadline:
        time.sleep(0.01)
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        if worker.num_steps != last:
            last, since = worker.num_steps, time.monotonic()
        elif time.monotonic() - since > 0.3:
            return
        time.sleep(0.02)
    raise AssertionError(f"the worker kept stepping: {_live_outputs(stack)}")


def _until_done(stack, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = stack.engine.stats()
        if stats.running == 0 and stats.workers[0].used_blocks == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"requests left: {stack.engine.stats()}")


def _request(i: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"unread-{i}-" + "x" * 100,  # larger frames fill the transport sooner
        token_ids=pb.TokenIds(ids=[5 + i, 6, 7, 8]),
        sampling=pb.SamplingParams(seed=i),
        stopping=pb.StoppingCriteria(max_new_tokens=MAX_NEW, ignore_eos=True),
        output=pb.OutputOptions(top_logprobs=5),
    )


def test_unread_grpc_streams_stop_generating_and_resume_exactly(stack) -> None:
    # A client that keeps HTTP/2's default receive window (gRPC's BDP probing would grow it
    # while the client's library, not its application, takes the frames).
    options = [("grpc.http2.bdp_probe", 0)]
    with grpc.insecure_channel(stack.address, options=options) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        calls = [stub.Generate(_request(i), timeout=120) for i in range(NUM_STREAMS)]
        _until_idle(stack, NUM_STREAMS)
        outputs = _live_outputs(stack)
        assert len(outputs) == NUM_STREAMS, outputs
        assert all(n < MAX_NEW // 2 for n in outputs.values()), outputs
        for i, call in enumerate(calls[:2]):  # read: each resumes, its output exact
            tokens = [t for frame in call for t in frame.token_ids]
            assert tokens == _cheap_reference([5 + i, 6, 7, 8], i, MAX_NEW)
        for call in calls[2:]:
            call.cancel()
    _until_done(stack)


def _sse_request(port: int) -> bytes:
    body = json.dumps(
        {
            "prompt": [9, 10, 11],
            "max_tokens": HTTP_MAX_NEW,
            "stream": True,
            "ignore_eos": True,
            "logprobs": 5,  # chunks of ~1 KB fill the socket buffers sooner
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_an_unread_http_stream_stops_generating_and_resumes(stack, tokenizer) -> None:
    from yaie.scheduler_service.api.http.routes import create_app
    from yaie.scheduler_service.api.http.server import HttpServer

    http = HttpServer(
        create_app(Frontend(stack.engine, tokenizer), KeyTable(None, environ={}), None),
        "127.0.0.1",
        0,
    )
    port = http.bind()
    stack.call(http.start())
    try:
        with socket.socket() as sock:
            sock.connect(("127.0.0.1", port))
            sock.sendall(_sse_request(port))
            _until_idle(stack, 1)
            outputs = _live_outputs(stack)
            # paused with the socket buffers full (~1,100 chunks of ~1 KB), short of the end
            assert len(outputs) == 1 and all(n < HTTP_MAX_NEW * 3 // 4 for n in outputs.values())
            received = bytearray()
            sock.settimeout(60)
            while not received.endswith(b"data: [DONE]\n\n") and (chunk := sock.recv(1 << 16)):
                received += chunk
            # (the chunked encoding's framing aside) every token arrived, in chunks
            events = [line for line in received.split(b"\n") if line.startswith(b"data: {")]
            reasons = [json.loads(event[6:])["choices"][0]["finish_reason"] for event in events]
            assert reasons[-1] == "length" and len(events) >= HTTP_MAX_NEW // 4
        _until_done(stack)
    finally:
        stack.call(http.stop())

"""A client's request_id is at most 128 printable ASCII characters (INVALID_ARGUMENT otherwise,
before any frame: a 1 MB id was echoed in every frame), and the request logs write a client's
string escaped and cut short: one line per entry whatever the id holds."""

from __future__ import annotations

import io
import json
import logging
import time

import grpc
import pytest
import served_stack

from yaie.scheduler_service.ops.logs import JsonFormatter
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

HUGE_ID = "x" * (1 << 20)


@pytest.fixture(scope="module")
def stack(tokenizer):
    with served_stack.served_stack(tokenizer) as stack:
        yield stack


@pytest.fixture
def stub(stack):
    with grpc.insecure_channel(stack.address) as channel:
        yield generation_pb2_grpc.GenerationStub(channel)


def _request(request_id: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        token_ids=pb.TokenIds(ids=[5, 6, 7]),
        stopping=pb.StoppingCriteria(max_new_tokens=4, ignore_eos=True),
    )


BAD_IDS = {"1 MB": HUGE_ID, "129": "x" * 129, "newline": "a\nb", "tab": "t\t", "é": "é"}
BAD_IDS["NUL"] = "\x00"


@pytest.mark.parametrize("request_id", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_long_or_unprintable_request_id_is_invalid_argument(stub, request_id) -> None:
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(_request(request_id), timeout=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in error.value.details() and len(error.value.details()) < 200
    with pytest.raises(grpc.RpcError) as error:
        stub.Abort(pb.AbortRequest(request_id=request_id), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_128_printable_characters_are_a_request_id(stub) -> None:
    request_id = ("id: ~!{}[]" * 13)[:128]
    frames = list(stub.Generate(_request(request_id), timeout=10))
    assert {frame.request_id for frame in frames} == {request_id}
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert not stub.Abort(pb.AbortRequest(request_id=request_id), timeout=10).found


def _captured(stub, request_id: str, formatter: logging.Formatter) -> list[str]:
    """The request log's text for one Generate call with request_id."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    log = logging.getLogger("yaie.requests")
    log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        with pytest.raises(grpc.RpcError):
            list(stub.Generate(_request(request_id), timeout=10))
        deadline = time.monotonic() + 10  # the finish entry is written once the call is over
        while "request finish" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
    return out.getvalue().splitlines()


@pytest.mark.parametrize(
    "request_id", [HUGE_ID, 'a\n2026-01-01 INFO forged: x="1"'], ids=["1 MB", "forged line"]
)
def test_request_logs_escape_and_cut_a_client_string(stub, request_id) -> None:
    lines = _captured(stub, request_id, logging.Formatter("%(message)s"))
    assert [line.split(" request_id=")[0] for line in lines] == ["request start", "request finish"]
    assert all(len(line) < 400 for line in lines), [len(line) for line in lines]
    if "\n" in request_id:
        escaped = 'request_id="a\\n2026-01-01 INFO forged: x=\\"1\\""'
        assert lines[0].startswith(f"request start {escaped} ")
    entries = [json.loads(line) for line in _captured(stub, request_id, JsonFormatter())]
    assert [e["message"].split(" ")[1] for e in entries] == ["start", "finish"]
    assert all(len(e["request_id"]) < 200 for e in entries)
    assert entries[1]["outcome"] == "invalid_argument"

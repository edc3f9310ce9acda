"""Every invalid request is INVALID_ARGUMENT and never reaches the engine; a good one then works."""

from __future__ import annotations

import math
import time

import grpc
import pytest

from yaie.v1 import generation_pb2 as pb

INF, NAN = math.inf, math.nan


def _request(**fields) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(**fields.pop("sampling", {}))
    stopping = pb.StoppingCriteria(**fields.pop("stopping", {}))
    output = pb.OutputOptions(**fields.pop("output", {}))
    return pb.GenerateRequest(sampling=sampling, stopping=stopping, output=output, **fields)


def _text(**fields) -> pb.GenerateRequest:
    fields.setdefault("stopping", {}).setdefault("max_new_tokens", 4)
    return _request(text="The sky is", **fields)


# (case, request); the scripted model's vocabulary is 768 tokens and its context 256.
INVALID = [
    ("no input", _request()),
    ("empty text", _request(text="")),
    ("empty token_ids", _request(token_ids=pb.TokenIds())),
    ("empty messages", _request(messages=pb.ChatMessages())),
    ("prompt id past the vocabulary", _request(token_ids=pb.TokenIds(ids=[5, 768]))),
    ("negative prompt id", _request(token_ids=pb.TokenIds(ids=[-1]))),
    ("stop_token_ids past the vocabulary", _text(stopping={"stop_token_ids": [10_000]})),
    ("logit_bias id past the vocabulary", _text(sampling={"logit_bias": {768: 1.0}})),
    ("logit_bias NaN", _text(sampling={"logit_bias": {5: NAN}})),
    ("temperature negative", _text(sampling={"temperature": -0.5})),
    ("temperature infinite", _text(sampling={"temperature": INF})),
    ("temperature NaN", _text(sampling={"temperature": NAN})),
    ("top_p zero", _text(sampling={"top_p": 0.0})),
    ("top_p above one", _text(sampling={"top_p": 1.01})),
    ("top_p NaN", _text(sampling={"top_p": NAN})),
    ("top_k negative", _text(sampling={"top_k": -1})),
    ("min_p negative", _text(sampling={"min_p": -0.01})),
    ("min_p above one", _text(sampling={"min_p": 1.5})),
    ("repetition_penalty zero", _text(sampling={"repetition_penalty": 0.0})),
    ("repetition_penalty negative", _text(sampling={"repetition_penalty": -1.0})),
    ("repetition_penalty infinite", _text(sampling={"repetition_penalty": INF})),
    ("frequency_penalty above 2", _text(sampling={"frequency_penalty": 2.01})),
    ("frequency_penalty below -2", _text(sampling={"frequency_penalty": -2.5})),
    ("presence_penalty above 2", _text(sampling={"presence_penalty": 3.0})),
    ("presence_penalty NaN", _text(sampling={"presence_penalty": NAN})),
    ("empty stop string", _text(stopping={"stop": ["ok", ""]})),
    ("17 stop strings", _text(stopping={"stop": [f"s{i}" for i in range(17)]})),
    ("top_logprobs above 20", _text(output={"top_logprobs": 21})),
    ("max_new_tokens zero", _text(stopping={"max_new_tokens": 0})),
    ("prompt + max_new_tokens past the context", _text(stopping={"max_new_tokens": 300})),
    ("prompt longer than the context", _request(token_ids=pb.TokenIds(ids=[5] * 300))),
    ("min_new_tokens above max_new_tokens", _text(stopping={"min_new_tokens": 5})),
    ("priority above 1000", _text(priority=1001)),
    ("priority below -1000", _text(priority=-(1 << 31))),
]


def _generate(served, request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return list(served.stub.Generate(request, timeout=10))


def _assert_good_request_succeeds(served) -> None:
    frames = _generate(served, _text())
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert frames[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("case, request_", INVALID, ids=[case for case, _ in INVALID])
def test_invalid_request_is_invalid_argument_then_a_good_one_succeeds(served, case, request_):
    with pytest.raises(grpc.RpcError) as error:
        _generate(served, request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert error.value.details()
    assert served.engine.submitted == [], "an invalid request reached the engine"
    _assert_good_request_succeeds(served)


def _raw_call(served, method: str, data: bytes, streaming: bool) -> None:
    identity = lambda raw: raw  # noqa: E731
    make = served.channel.unary_stream if streaming else served.channel.unary_unary
    call = make(method, request_serializer=identity, response_deserializer=identity)
    result = call(data, timeout=10)
    if streaming:
        list(result)


PLACEHOLDER = "QQQQ"  # replaced on the wire by 4 bytes that are not UTF-8
NOT_UTF8 = b"ca\xffe"
CHAT = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=PLACEHOLDER)])


@pytest.mark.parametrize(
    "field, request_",
    [
        ("text", _request(text=PLACEHOLDER)),
        ("stopping.stop[1]", _text(stopping={"stop": ["a", PLACEHOLDER]})),
        ("messages.messages[0].content", _request(messages=CHAT)),
    ],
)
def test_invalid_utf8_is_invalid_argument_naming_the_field(served, field, request_) -> None:
    data = request_.SerializeToString().replace(PLACEHOLDER.encode(), NOT_UTF8)
    with pytest.raises(grpc.RpcError) as error:
        _raw_call(served, "/yaie.v1.Generation/Generate", data, True)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.value.details() and "UTF-8" in error.value.details()
    assert served.engine.submitted == []
    _assert_good_request_succeeds(served)


def test_tokenize_with_invalid_utf8_is_invalid_argument(served) -> None:
    with pytest.raises(grpc.RpcError) as error:
        _raw_call(served, "/yaie.v1.Generation/Tokenize", b"\x0a\x02\xc3\x28", False)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text" in error.value.details()


def test_a_duplicate_live_request_id_is_invalid_argument_and_abort_is_idempotent(served) -> None:
    served.engine.script = lambda request: [7, 8]  # then "generates" until aborted
    stream = served.stub.Generate(_request(request_id="dup", text="a"), timeout=10)
    first = next(stream)
    assert first.request_id == "dup"
    with pytest.raises(grpc.RpcError) as error:
        _generate(served, _request(request_id="dup", text="b"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert served.stub.Abort(pb.AbortRequest(request_id="dup")).found
    rest = list(stream)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORT
    assert not served.stub.Abort(pb.AbortRequest(request_id="dup")).found
    assert not served.stub.Abort(pb.AbortRequest(request_id="never-seen")).found


def test_a_request_that_could_never_fit_is_resource_exhausted(served) -> None:
    served.engine.pool_tokens = 8
    with pytest.raises(grpc.RpcError) as error:
        _generate(served, _text(stopping={"max_new_tokens": 100}))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_client_cancel_and_deadline_abort_the_request(served) -> None:
    served.engine.script = lambda request: [7]  # then "generates" until aborted
    stream = served.stub.Generate(_request(request_id="cancelled", text="a"), timeout=10)
    next(stream)
    stream.cancel()
    with pytest.raises(grpc.RpcError) as error:
        list(served.stub.Generate(_request(request_id="late", text="a"), timeout=0.3))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while not {"cancelled", "late"} <= set(served.engine.aborted) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert {"cancelled", "late"} <= set(served.engine.aborted)

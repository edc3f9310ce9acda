"""Bytes that do not decode as the method's request get INVALID_ARGUMENT from every method of the
public server (Generation, health, reflection; unary and streamed), with no traceback logged;
the server keeps serving."""

from __future__ import annotations

import logging

import grpc
import pytest

from yaie.v1 import generation_pb2 as pb

CORRUPT = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, a length past the end
BAD_UTF8 = b"\x0a\x04a\xff\xfe\xc3"  # field 1 (a string in each request below) of invalid UTF-8
UNARY = [
    "/yaie.v1.Generation/Tokenize",
    "/yaie.v1.Generation/Detokenize",
    "/yaie.v1.Generation/GetModelInfo",
    "/yaie.v1.Generation/GetServerStats",
    "/yaie.v1.Generation/Abort",
    "/grpc.health.v1.Health/Check",
]


def _raw(channel: grpc.Channel, method: str, kind: str):
    make = getattr(channel, kind)
    return make(method, request_serializer=lambda data: data, response_deserializer=None)


@pytest.mark.parametrize("method", UNARY)
def test_corrupt_bytes_to_a_unary_method_are_invalid_argument(served, caplog, method) -> None:
    caplog.set_level(logging.WARNING)
    with pytest.raises(grpc.RpcError) as error:
        _raw(served.channel, method, "unary_unary")(CORRUPT, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert "malformed" in error.value.details()
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert served.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size == 768


@pytest.mark.parametrize("method", ["/yaie.v1.Generation/Generate", "/grpc.health.v1.Health/Watch"])
def test_corrupt_bytes_to_a_streaming_method_are_invalid_argument(served, caplog, method):
    caplog.set_level(logging.WARNING)
    with pytest.raises(grpc.RpcError) as error:
        list(_raw(served.channel, method, "unary_stream")(CORRUPT, timeout=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert not [r for r in caplog.records if r.exc_info]


def test_corrupt_bytes_in_a_request_stream_are_invalid_argument(served, caplog) -> None:
    caplog.set_level(logging.WARNING)
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    call = _raw(served.channel, method, "stream_stream")(iter([CORRUPT]), timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        list(call)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("method", ["Tokenize", "Abort", "Generate"])
def test_invalid_utf8_names_the_field(served, method) -> None:
    kind = "unary_stream" if method == "Generate" else "unary_unary"
    call = _raw(served.channel, f"/yaie.v1.Generation/{method}", kind)
    with pytest.raises(grpc.RpcError) as error:
        result = call(BAD_UTF8, timeout=10)
        if kind == "unary_stream":
            list(result)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not valid UTF-8" in error.value.details()

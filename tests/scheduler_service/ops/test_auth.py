"""API keys on the public API: every Generation RPC refuses a missing or malformed key with
UNAUTHENTICATED; the right key works; health and reflection stay open."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
import served_stack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from yaie.scheduler_service.ops.auth import ApiKeyInterceptor, KeyTable, bearer_key
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

KEY = "sk-test-0123456789abcdef"
BAD_AUTHORIZATION = {
    "missing": None,
    "wrong key": "Bearer sk-test-wrong-key-000000",
    "wrong case": f"bearer {KEY}",
    "prefix of the key": f"Bearer {KEY[:-1]}",
    "no scheme": KEY,
    "extra space inside": f"Bearer  {KEY}",
    "trailing space": f"Bearer {KEY} ",
    "key with a suffix": f"Bearer {KEY}x",
    "another scheme": f"Basic {KEY}",
}

Call = Callable[[generation_pb2_grpc.GenerationStub, tuple], object]
CALLS: dict[str, Call] = {
    "Generate": lambda stub, md: list(
        stub.Generate(
            pb.GenerateRequest(text="hi", stopping=pb.StoppingCriteria(max_new_tokens=2)),
            metadata=md,
            timeout=10,
        )
    ),
    "Tokenize": lambda stub, md: stub.Tokenize(pb.TokenizeRequest(text="hi"), metadata=md),
    "Detokenize": lambda stub, md: stub.Detokenize(pb.DetokenizeRequest(ids=[70]), metadata=md),
    "GetModelInfo": lambda stub, md: stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md),
    "GetServerStats": lambda stub, md: stub.GetServerStats(pb.GetServerStatsRequest(), metadata=md),
    "Abort": lambda stub, md: stub.Abort(pb.AbortRequest(request_id="x"), metadata=md),
}


@pytest.fixture(scope="module")
def stub(tokenizer) -> Iterator[generation_pb2_grpc.GenerationStub]:
    interceptor = ApiKeyInterceptor(KeyTable.single(KEY.encode()))
    with served_stack.served_stack(tokenizer, interceptors=[interceptor]) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            yield generation_pb2_grpc.GenerationStub(channel)


def _metadata(authorization: str | None) -> tuple:
    return () if authorization is None else (("authorization", authorization),)


@pytest.mark.parametrize("rpc", list(CALLS))
@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
def test_every_generation_rpc_refuses_a_bad_key_with_unauthenticated(stub, rpc, case) -> None:
    with pytest.raises(grpc.RpcError) as error:
        CALLS[rpc](stub, _metadata(BAD_AUTHORIZATION[case]))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("rpc", list(CALLS))
def test_every_generation_rpc_works_with_the_right_key(stub, rpc) -> None:
    CALLS[rpc](stub, _metadata(f"Bearer {KEY}"))  # raises on any error status


def test_two_authorization_entries_are_refused(stub) -> None:
    """An ambiguous call (a right and a wrong key) is refused, whatever their order."""
    metadata = (("authorization", "Bearer nope"), ("authorization", f"Bearer {KEY}"))
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_need_no_key(tokenizer) -> None:
    with served_stack.served_stack(
        tokenizer, interceptors=[ApiKeyInterceptor(KeyTable.single(b"k"))]
    ) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            answers = list(reflection.ServerReflectionInfo(iter([ask]), timeout=5))
            names = {s.name for s in answers[0].list_services_response.service}
            assert "yaie.v1.Generation" in names


def test_reflection_v1_answers_as_v1alpha_does(tokenizer) -> None:
    """grpc.reflection.v1 (what newer grpcurl asks first) lists the services and describes them."""
    ask_list = reflection_pb2.ServerReflectionRequest(list_services="")
    ask_file = reflection_pb2.ServerReflectionRequest(file_containing_symbol="yaie.v1.Generation")
    with served_stack.served_stack(
        tokenizer, interceptors=[ApiKeyInterceptor(KeyTable.single(b"k"))]
    ) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            info = channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            listed, described = list(info(iter([ask_list, ask_file]), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"yaie.v1.Generation", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_key_loading_from_file_and_environment(tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n")
    for table in (
        KeyTable(str(key_file), environ={}),
        KeyTable(None, environ={"YAIE_API_KEY": KEY}),
    ):
        tenant = table.tenant_of((("authorization", f"Bearer {KEY}"),))
        assert tenant is not None and tenant.name == "default" and tenant.admin
    assert not KeyTable(None, environ={}).required
    for bad in ("", "two words"):
        with pytest.raises(ValueError):
            KeyTable(None, environ={"YAIE_API_KEY": bad})
    with pytest.raises(ValueError):
        KeyTable(str(tmp_path / "absent"), environ={})


def test_bearer_parsing_is_exact() -> None:
    assert bearer_key((("authorization", f"Bearer {KEY}"),)) == KEY.encode()
    assert bearer_key((("x", "y"), ("authorization", f"Bearer {KEY}".encode()))) == KEY.encode()
    table = KeyTable.single(KEY.encode())
    for value in filter(None, BAD_AUTHORIZATION.values()):
        assert table.tenant_of((("authorization", value),)) is None
    assert bearer_key(None) is None

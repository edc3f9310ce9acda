"""The Generation service's frames: text deltas, stop strings, finish reasons, usage, logprobs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.v1 import generation_pb2 as pb

EOS = 1  # <|eos|> of the built-in tokenizer


def _script(tokenizer: Tokenizer, text: str, then: list[int] | None = None):
    ids = tokenizer.encode(text, add_special_tokens=False) + (then or [])
    return lambda request: list(ids)


def _frames(served, **fields) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[10, 11, 12]), **fields)
    return list(served.stub.Generate(request, timeout=10))


def test_stop_string_spanning_tokens_never_leaks(served, tokenizer: Tokenizer) -> None:
    served.engine.script = _script(tokenizer, "The cook says: STOP now, please.")
    frames = _frames(served, stopping=pb.StoppingCriteria(stop=["STOP", "xyz"]))
    assert "".join(f.text for f in frames) == "The cook says: "
    assert all("S" not in f.text for f in frames)
    last = frames[-1]
    assert (last.finish_reason, last.matched_stop) == (pb.FINISH_REASON_STOP, "STOP")
    assert not last.HasField("matched_stop_token_id")
    assert served.engine.finished == [last.request_id]
    assert all(f.finish_reason == pb.FINISH_REASON_UNSPECIFIED for f in frames[:-1])


def test_include_stop_str_in_output_ends_the_text_with_it(served, tokenizer: Tokenizer) -> None:
    served.engine.script = _script(tokenizer, "one two three four")
    stopping = pb.StoppingCriteria(stop=["three"], include_stop_str_in_output=True)
    frames = _frames(served, stopping=stopping)
    assert "".join(f.text for f in frames) == "one two three"


def test_eos_stops_with_its_id_and_ignore_eos_goes_on(served, tokenizer: Tokenizer) -> None:
    served.engine.script = _script(tokenizer, "the sky", then=[EOS] + [20] * 10)
    frames = _frames(served, output=pb.OutputOptions(skip_special_tokens=True))
    last = frames[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP and last.matched_stop_token_id == EOS
    assert "".join(f.text for f in frames) == "the sky"
    assert sum(len(f.token_ids) for f in frames) == last.usage.completion_tokens
    frames = _frames(served, stopping=pb.StoppingCriteria(ignore_eos=True, max_new_tokens=8))
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert frames[-1].usage.completion_tokens == 8


def test_multi_byte_characters_are_never_split_in_frames(served, tokenizer: Tokenizer) -> None:
    text = "日本語 café 🙂"
    served.engine.script = _script(tokenizer, text, then=[EOS])
    frames = _frames(served, output=pb.OutputOptions(skip_special_tokens=True))
    assert "".join(f.text for f in frames) == text
    assert not any("\ufffd" in f.text for f in frames)
    assert any(f.token_ids and not f.text for f in frames), "some token must be held back"


def test_usage_in_every_frame_and_top_logprobs_when_asked(served) -> None:
    output = pb.OutputOptions(top_logprobs=2)
    frames = _frames(served, stopping=pb.StoppingCriteria(max_new_tokens=5), output=output)
    assert [f.usage.completion_tokens for f in frames] == [1, 2, 3, 4, 5]
    assert all(f.usage.prompt_tokens == 3 for f in frames)
    for frame in frames:
        assert [lp.token_id for lp in frame.logprobs] == list(frame.token_ids)
        assert all(len(lp.top) == 2 for lp in frame.logprobs)
    plain = _frames(served, stopping=pb.StoppingCriteria(max_new_tokens=2))
    assert not any(f.logprobs for f in plain)


def test_single_frame_holds_the_whole_generation(served, tokenizer: Tokenizer) -> None:
    served.engine.script = _script(tokenizer, "the warm day is here")
    streamed = _frames(served, stopping=pb.StoppingCriteria(max_new_tokens=4))
    single = _frames(
        served,
        stopping=pb.StoppingCriteria(max_new_tokens=4),
        output=pb.OutputOptions(single_frame=True),
    )
    assert len(single) == 1
    assert single[0].text == "".join(f.text for f in streamed)
    assert list(single[0].token_ids) == [t for f in streamed for t in f.token_ids]
    assert single[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert single[0].usage.completion_tokens == 4


def test_defaults_reach_the_engine_resolved(served) -> None:
    served.engine.script = lambda request: [20] * 300
    frames = _frames(served, request_id="r1")
    assert frames[-1].request_id == "r1"
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    (request,) = served.engine.submitted
    assert request.max_new_tokens == 256 - 3
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (1, 1, 0, 0)
    assert EOS in request.stop_token_ids


def test_tokenize_detokenize_model_info_and_stats(served, tokenizer: Tokenizer) -> None:
    ids = served.stub.Tokenize(pb.TokenizeRequest(text="The sky is blue")).ids
    assert list(ids) == tokenizer.encode("The sky is blue")
    assert served.stub.Detokenize(pb.DetokenizeRequest(ids=ids)).text == "The sky is blue"
    with pytest.raises(grpc.RpcError) as error:
        served.stub.Detokenize(pb.DetokenizeRequest(ids=[100_000]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = served.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.vocab_size, info.max_context, info.random_weights) == (768, 256, True)
    assert (info.dtype, info.kv_cache_dtype) == ("float32", "fp8_e4m3")
    assert set(info.eos_token_ids) == {1, 6}
    stats = served.stub.GetServerStats(pb.GetServerStatsRequest())
    assert stats.workers[0].total_blocks == 64 and stats.workers[0].cache_hit_rate == 0.5


def test_health_is_serving_and_reflection_lists_the_service(served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", "yaie.v1.Generation"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"yaie.v1.Generation", "grpc.health.v1.Health"} <= names


def test_a_generic_client_can_call_generate_from_reflection_alone(served) -> None:
    """What grpcurl does: fetch the descriptors by reflection, build messages from JSON."""
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="yaie.v1.Generation")
    (reply,) = list(stub.ServerReflectionInfo(iter([request])))
    pool = descriptor_pool.DescriptorPool()
    for raw in reply.file_descriptor_response.file_descriptor_proto:
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
    find = pool.FindMessageTypeByName
    request_class = message_factory.GetMessageClass(find("yaie.v1.GenerateRequest"))
    response_class = message_factory.GetMessageClass(find("yaie.v1.GenerateResponse"))
    body = json_format.Parse('{"text": "abc", "stopping": {"max_new_tokens": 3}}', request_class())
    call = served.channel.unary_stream(
        "/yaie.v1.Generation/Generate",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    frames = [json_format.MessageToDict(frame) for frame in call(body, timeout=10)]
    assert frames[-1]["finishReason"] == "FINISH_REASON_LENGTH"
    assert frames[-1]["usage"]["completionTokens"] == 3

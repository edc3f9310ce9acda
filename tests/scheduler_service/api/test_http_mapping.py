"""OpenAI bodies map onto yaie.v1 GenerateRequest field by field (what both APIs then validate
alike), and the HTTP API's errors carry OpenAI's status codes and error object."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from yaie.scheduler_service.api.http.errors import error_body, status_of
from yaie.scheduler_service.api.http.protocol import ChatCompletionRequest, CompletionRequest
from yaie.scheduler_service.api.http.to_generate import chat_request, completion_requests
from yaie.scheduler_service.engine.errors import ResourceExhaustedError, UnavailableError


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_chat_fields_map_onto_the_engine_request():
    body = chat(
        max_tokens=5,
        max_completion_tokens=7,  # the newer name wins
        temperature=0,
        top_p=0.5,
        seed=3,
        stop="END",
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        logit_bias={"12": -100},
        logprobs=True,
        top_logprobs=2,
        top_k=4,
        min_p=0.1,
        repetition_penalty=1.1,
        ignore_eos=True,
        min_tokens=2,
        user="someone",
        unknown_field={"ignored": True},
    )
    message = chat_request(body, "r1")
    assert message.request_id == "r1"
    assert [(m.role, m.content) for m in message.messages.messages] == [("user", "hi")]
    s, stopping, output = message.sampling, message.stopping, message.output
    assert (s.temperature, s.top_p, s.seed, s.top_k) == (0.0, 0.5, 3, 4)
    assert s.min_p == pytest.approx(0.1) and s.repetition_penalty == pytest.approx(1.1)
    assert (s.frequency_penalty, s.presence_penalty) == (0.5, -0.5)
    assert dict(s.logit_bias) == {12: -100.0}
    assert stopping.max_new_tokens == 7 and list(stopping.stop) == ["END"]
    assert stopping.ignore_eos and stopping.min_new_tokens == 2
    assert output.logprobs and output.top_logprobs == 2 and output.skip_special_tokens
    assert not message.HasField("response_format") or not message.response_format.WhichOneof(
        "format"
    )


def test_n_maps_onto_the_request_n():
    """n becomes GenerateRequest.n: each prompt's choices are its completions."""
    assert chat_request(chat(n=4), "r").n == 4
    messages = completion_requests(CompletionRequest(prompt=["a", "b"], n=3), "r")
    assert [(m.request_id, m.n) for m in messages] == [("r-0", 3), ("r-1", 3)]


def test_unset_fields_stay_unset_for_the_engine_defaults():
    message = chat_request(chat(), "r")
    assert not message.sampling.HasField("temperature")
    assert not message.stopping.HasField("max_new_tokens")  # chat: up to the context


def test_content_parts_join_their_text_and_refuse_images():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    message = chat_request(chat(messages=[{"role": "user", "content": parts}]), "r")
    assert message.messages.messages[0].content == "a\nb"
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(ValueError, match="image_url"):
        chat_request(chat(messages=[{"role": "user", "content": image}]), "r")


def test_completion_prompts_string_list_and_token_ids():
    one = completion_requests(CompletionRequest(prompt="hello"), "c")
    assert [m.text for m in one] == ["hello"] and one[0].request_id == "c"
    assert one[0].stopping.max_new_tokens == 16  # OpenAI's legacy default
    ids = completion_requests(CompletionRequest(prompt=[5, 6, 7], logprobs=0), "c")
    assert [list(m.token_ids.ids) for m in ids] == [[5, 6, 7]]
    assert ids[0].output.logprobs and ids[0].output.top_logprobs == 0
    several = completion_requests(CompletionRequest(prompt=["a", "b"], stop=["x", "y"]), "c")
    assert [(m.request_id, m.text) for m in several] == [("c-0", "a"), ("c-1", "b")]
    assert list(several[1].stopping.stop) == ["x", "y"]
    batch = completion_requests(CompletionRequest(prompt=[[1, 2], [3]]), "c")
    assert [list(m.token_ids.ids) for m in batch] == [[1, 2], [3]]


def test_priority_has_vllms_meaning_lower_first():
    """The body's priority (vLLM: lower is handled first) is the gRPC field negated (higher
    first), for chat and for each prompt of a completion; unset is 0."""
    assert chat_request(chat(priority=5), "r").priority == -5
    assert chat_request(chat(priority=-1000), "r").priority == 1000
    assert chat_request(chat(), "r").priority == 0
    several = completion_requests(CompletionRequest(prompt=["a", "b"], priority=-3), "c")
    assert [m.priority for m in several] == [3, 3]


def test_response_format_and_the_regex_ebnf_extensions():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": True}}
    message = chat_request(chat(response_format=spec), "r")
    assert json.loads(message.response_format.json_schema) == schema
    assert chat_request(
        chat(response_format={"type": "json_object"}), "r"
    ).response_format.json_object
    assert not chat_request(chat(response_format={"type": "text"}), "r").response_format.WhichOneof(
        "format"
    )
    assert chat_request(chat(regex="[ab]+"), "r").response_format.regex == "[ab]+"
    assert chat_request(chat(ebnf='root ::= "x"'), "r").response_format.ebnf == 'root ::= "x"'
    with pytest.raises(ValueError, match="at most one"):
        chat_request(chat(regex="a", response_format={"type": "json_object"}), "r")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"n": 0}, r"n must be in \[1, 64\]"),
        ({"n": 65}, r"n must be in \[1, 64\]"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"top_logprobs": 2}, "needs logprobs"),
        ({"seed": -1}, "seed"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"priority": 1001}, r"priority must be in \[-1000, 1000\], got 1001"),
        ({"priority": -(1 << 40)}, "priority"),
    ],
)
def test_bad_values_are_value_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        chat_request(chat(**fields), "r")


@pytest.mark.parametrize(
    "fields",
    [{"temperature": "hot"}, {"max_tokens": 1.5}, {"stream": "yes"}, {"messages": "hi"}],
)
def test_wrong_types_fail_validation(fields):
    with pytest.raises(ValidationError):
        chat(**fields)


def test_errors_map_to_openai_status_codes_and_bodies():
    assert status_of(ValueError("x")) == 400
    assert status_of(ResourceExhaustedError("queue full")) == 429
    assert status_of(UnavailableError("draining")) == 503
    assert status_of(RuntimeError("bug")) == 500
    body = error_body(404, "no such model", "model")
    assert body == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }

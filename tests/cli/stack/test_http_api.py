"""The OpenAI-compatible HTTP API of a real `yaie serve --http-port` (tiny random Llama on CPU),
driven by the official `openai` client: chat and completions, streamed and not, equal to the
gRPC API's greedy output; stop strings, logprobs, errors, and a disconnect that frees its blocks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import httpx
import openai
import pytest

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def http(tools, model_dirs) -> Iterator[SimpleNamespace]:
    port = tools.free_port()
    model = model_dirs["LlamaForCausalLM"]
    metrics = str(tools.free_port())
    with tools.running_stack(model, "--http-port", str(port), "--metrics-port", metrics) as stack:
        channel = grpc.insecure_channel(stack.target)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        yield SimpleNamespace(
            url=f"http://127.0.0.1:{port}",
            client=client,
            stub=generation_pb2_grpc.GenerationStub(channel),
            model=client.models.list().data[0].id,
        )
        client.close()
        channel.close()


def grpc_text(stub, **input_fields) -> pb.GenerateResponse:
    request = pb.GenerateRequest(
        sampling=pb.SamplingParams(temperature=0),
        stopping=pb.StoppingCriteria(max_new_tokens=12),
        output=pb.OutputOptions(skip_special_tokens=True, single_frame=True),
        **input_fields,
    )
    return list(stub.Generate(request))[-1]


def test_models_lists_the_served_model(http):
    assert http.model.endswith("LlamaForCausalLM")
    assert httpx.get(f"{http.url}/health").status_code == 200


def test_chat_greedy_equals_grpc_streamed_or_not(http):
    messages = pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in MESSAGES])
    expected = grpc_text(http.stub, messages=messages)
    reply = http.client.chat.completions.create(
        model=http.model, messages=MESSAGES, temperature=0, max_tokens=12
    )
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == {1: "stop", 2: "length"}[expected.finish_reason]
    usage = reply.usage
    assert usage.prompt_tokens == expected.usage.prompt_tokens
    assert usage.completion_tokens == expected.usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == expected.usage.cached_tokens

    chunks = list(
        http.client.chat.completions.create(
            model=http.model,
            messages=MESSAGES,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        usage.completion_tokens
    )


def test_completions_text_and_token_ids_streamed_or_not(http):
    expected = grpc_text(http.stub, token_ids=pb.TokenIds(ids=[5, 17, 42, 99]))
    reply = http.client.completions.create(
        model=http.model, prompt=[5, 17, 42, 99], temperature=0, max_tokens=12
    )
    assert reply.object == "text_completion" and reply.choices[0].text == expected.text
    stream = http.client.completions.create(
        model="", prompt=[5, 17, 42, 99], temperature=0, max_tokens=12, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == expected.text
    expected = grpc_text(http.stub, text="Once upon")
    reply = http.client.completions.create(
        model=http.model, prompt=["Once upon", "Once upon"], temperature=0, max_tokens=12
    )
    assert [c.text for c in reply.choices] == [expected.text] * 2
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens == 2 * expected.usage.completion_tokens


def test_stop_string_ends_the_text_before_it(http):
    full = http.client.completions.create(
        model=http.model,
        prompt="Once upon",
        temperature=0,
        max_tokens=24,
        extra_body={"ignore_eos": True},
    )
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"pick a stop string inside {text!r}"
    for stream in (False, True):
        reply = http.client.completions.create(
            model=http.model,
            prompt="Once upon",
            temperature=0,
            max_tokens=24,
            stop=[stop],
            stream=stream,
            extra_body={"ignore_eos": True},
        )
        choices = [c.choices[0] for c in reply] if stream else reply.choices
        assert "".join(c.text for c in choices) == text[: text.index(stop)]
        assert choices[-1].finish_reason == "stop"


def test_logprobs_chat_and_completions(http):
    reply = http.client.chat.completions.create(
        model=http.model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.bytes == list(entry.token.encode())
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)  # greedy
    reply = http.client.completions.create(
        model=http.model, prompt="Once", temperature=0, max_tokens=5, logprobs=2, stream=False
    )
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 5
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"messages": MESSAGES, "temperature": "hot"}, 400, "temperature"),
        ({"messages": "hi"}, 400, "messages"),
        ({"messages": MESSAGES, "n": 65}, 400, None),
        ({"messages": MESSAGES, "max_tokens": 10**6}, 400, None),
        ({"messages": MESSAGES, "top_p": 7}, 400, None),
        ({"messages": MESSAGES, "model": "gpt-4o"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors(http, body, status, param):
    reply = httpx.post(f"{http.url}/v1/chat/completions", json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    if status == 404:
        assert error["code"] == "model_not_found"


def test_the_sdk_raises_its_error_classes(http):
    with pytest.raises(openai.NotFoundError):
        http.client.chat.completions.create(model="nope", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="n must be in"):
        http.client.chat.completions.create(model=http.model, messages=MESSAGES, n=0)
    assert httpx.post(f"{http.url}/v1/chat/completions", content=b"{").status_code == 400
    unknown = {"messages": MESSAGES, "max_tokens": 2, "not_an_openai_field": [1]}
    assert httpx.post(f"{http.url}/v1/chat/completions", json=unknown).status_code == 200


def _cancelled(url: str) -> float:
    """Requests that ended cancelled, from the metrics the HTTP port serves."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('yaie_requests_total{outcome="cancelled"}'):
            return float(line.split()[-1])
    return 0.0


def _idle(stub) -> bool:
    stats = stub.GetServerStats(pb.GetServerStatsRequest())
    return stats.running == 0 and stats.waiting == 0 and stats.workers[0].used_blocks == 0


def test_disconnect_mid_stream_aborts_and_frees_blocks(http):
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    cancelled = _cancelled(http.url)
    with httpx.stream("POST", f"{http.url}/v1/completions", json=body) as reply:
        lines = reply.iter_lines()
        events: list[dict] = []
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
            if len(events) == 3:
                break
        stats = http.stub.GetServerStats(pb.GetServerStatsRequest())
        assert stats.running == 1 and stats.workers[0].used_blocks > 0
    deadline = time.monotonic() + 10
    while not _idle(http.stub) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _idle(http.stub), http.stub.GetServerStats(pb.GetServerStatsRequest())
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    # Aborted, not run to its end: the request log's outcome, in the metrics on the HTTP port.
    assert _cancelled(http.url) == cancelled + 1


def test_response_format_json_schema_output_validates(http):
    jsonschema = pytest.importorskip("jsonschema")
    # A finite language (a boolean and an enum), so that even the random tiny model's output
    # completes, and ends by its grammar (stop), well inside max_tokens.
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green"]}},
        "required": ["ok", "colour"],
        "additionalProperties": False,
    }
    reply = http.client.chat.completions.create(
        model=http.model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_n_choices_are_the_grpc_completions_streamed_or_not(http):
    """n = 3 with a seed at temperature 1: choices 0..2 are the gRPC request's completions (their
    text and finish reasons); streamed, every chunk names its choice; the prompt counts once."""
    messages = pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in MESSAGES])
    request = pb.GenerateRequest(
        messages=messages,
        sampling=pb.SamplingParams(temperature=1.0, seed=11),
        stopping=pb.StoppingCriteria(max_new_tokens=10),
        output=pb.OutputOptions(skip_special_tokens=True, single_frame=True),
        n=3,
    )
    frames = list(http.stub.Generate(request))
    assert [f.index for f in frames] == [0, 1, 2]
    reply = http.client.chat.completions.create(
        model=http.model, messages=MESSAGES, temperature=1.0, seed=11, max_tokens=10, n=3
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == [f.text for f in frames]
    assert reply.usage.prompt_tokens == frames[0].usage.prompt_tokens
    assert reply.usage.completion_tokens == sum(f.usage.completion_tokens for f in frames)
    chunks = list(
        http.client.chat.completions.create(
            model=http.model,
            messages=MESSAGES,
            temperature=1.0,
            seed=11,
            max_tokens=10,
            n=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: "", 2: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[i] for i in range(3)] == [f.text for f in frames]
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

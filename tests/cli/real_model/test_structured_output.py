"""Structured output on the real built-in model (CPU worker in process, overlap on): a JSON schema's
outputs parse and validate at temperature 0 and 1, a regex full-matches, an EBNF grammar and
json_object hold, constrained and unconstrained rows batched together give each its tokens alone,
jump-forward changes no output, a bad constraint is INVALID_ARGUMENT, and a cancelled constrained
request frees its blocks and its matcher."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.cli.real_model.structured_stack import load_servicer, structured_stack
from yaie.scheduler_service.config import SchedulerConfig
from yaie.v1 import generation_pb2 as pb

jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}
PERSON = "Describe a fictional person as JSON with name, age, role and tags."
PHONE = r"\(\d{3}\) \d{3}-\d{4}"
EBNF = 'root ::= "The answer is " ("yes" | "no") "."'


def _request(
    prompt: str, fmt: pb.ResponseFormat | None = None, logprobs: bool = False, **kwargs
) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        messages=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=prompt)]),
        stopping=pb.StoppingCriteria(max_new_tokens=kwargs.pop("max_new_tokens", 96)),
        sampling=pb.SamplingParams(**kwargs),
        output=pb.OutputOptions(skip_special_tokens=True, logprobs=logprobs),
    )
    if fmt is not None:
        request.response_format.CopyFrom(fmt)
    return request


@pytest.fixture(scope="module")
def servicer(builtin_dir):
    return load_servicer(builtin_dir)


@pytest.fixture(scope="module")
def stack(builtin_dir, servicer):
    with structured_stack(builtin_dir, servicer) as stack:
        yield stack


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, 0), (1.0, 1), (1.0, 2)])
def test_json_schema_outputs_parse_and_validate(stack, temperature, seed) -> None:
    fmt = pb.ResponseFormat(json_schema=json.dumps(SCHEMA))
    result = stack.generate(
        _request(PERSON, fmt, temperature=temperature, seed=seed, max_new_tokens=160)
    )
    assert result.finish_reason == pb.FINISH_REASON_STOP, result.text
    jsonschema.validate(json.loads(result.text), SCHEMA)


def test_regex_output_full_matches(stack) -> None:
    fmt = pb.ResponseFormat(regex=PHONE)
    result = stack.generate(_request("Give me a US phone number.", fmt, temperature=0.0))
    assert result.finish_reason == pb.FINISH_REASON_STOP
    assert re.fullmatch(PHONE, result.text), result.text


def test_ebnf_output_is_a_sentence_of_the_grammar(stack) -> None:
    fmt = pb.ResponseFormat(ebnf=EBNF)
    result = stack.generate(_request("Is Paris in France?", fmt, temperature=1.0, seed=5))
    assert result.finish_reason == pb.FINISH_REASON_STOP
    assert result.text in ("The answer is yes.", "The answer is no.")


def test_json_object_output_is_an_object(stack) -> None:
    fmt = pb.ResponseFormat(json_object=True)
    result = stack.generate(
        _request("Reply with a JSON object about a cat.", fmt, temperature=0.0, max_new_tokens=200)
    )
    if result.finish_reason == pb.FINISH_REASON_STOP:
        assert isinstance(json.loads(result.text), dict)
    else:  # an unfinished prefix at the length limit, which the reason tells
        assert result.finish_reason == pb.FINISH_REASON_LENGTH
        assert result.text.lstrip().startswith("{")


def test_length_limit_gives_an_unfinished_prefix(stack) -> None:
    fmt = pb.ResponseFormat(json_schema=json.dumps(SCHEMA))
    result = stack.generate(_request(PERSON, fmt, temperature=0.0, max_new_tokens=5))
    assert result.finish_reason == pb.FINISH_REASON_LENGTH
    assert len(result.token_ids) == 5 and result.text.startswith('{"name": ')


@pytest.mark.parametrize(
    "fmt",
    [
        pb.ResponseFormat(json_schema='{"type": "objectx"}'),
        pb.ResponseFormat(json_schema="not json"),
        pb.ResponseFormat(regex="(ab"),
        pb.ResponseFormat(ebnf="root ::= missing"),
        pb.ResponseFormat(json_object=False),
    ],
)
def test_bad_constraint_is_invalid_argument_with_the_reason(stack, fmt) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stack.generate(_request("hi", fmt))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "response_format" in raised.value.details()


def test_mixed_batch_gives_each_row_its_tokens_alone(stack) -> None:
    requests = [
        _request(PERSON, pb.ResponseFormat(json_schema=json.dumps(SCHEMA)), temperature=0.0),
        _request("Name three colors.", temperature=1.0, seed=7, max_new_tokens=24),
        _request(
            "Give me a phone number.", pb.ResponseFormat(regex=PHONE), temperature=0.7, seed=3
        ),
        _request("Tell me a joke.", temperature=0.0, max_new_tokens=24),
        _request(
            "Is the sky blue?",
            pb.ResponseFormat(ebnf=EBNF),
            temperature=1.0,
            seed=11,
            repetition_penalty=1.3,
            top_k=20,
        ),
    ]
    alone = [stack.generate(r).token_ids for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: stack.generate(r).token_ids, requests))
    assert together == alone


def test_jump_forward_keeps_greedy_output_and_valid_samples(builtin_dir, servicer, stack) -> None:
    """Greedy text is the same with and without jump-forward; sampled text may differ (XGrammar
    tokenizes forced text its own way, which moves later samples) but stays valid, with one
    logprob per token (0 for forced ones)."""
    fmt = pb.ResponseFormat(json_schema=json.dumps(SCHEMA))
    greedy = _request(PERSON, fmt, temperature=0.0, max_new_tokens=160)
    sampled = _request(PERSON, fmt, temperature=1.0, seed=4, max_new_tokens=160, logprobs=True)
    decoded = stack.generate(greedy)  # the default: jump-forward off
    config = SchedulerConfig(enable_jump_forward=True)
    with structured_stack(builtin_dir, servicer, config) as jumping:
        jumped = [jumping.generate(r) for r in (greedy, sampled)]
    assert jumped[0].text == decoded.text
    for result in jumped:
        jsonschema.validate(json.loads(result.text), SCHEMA)
    assert len(jumped[1].logprobs) == len(jumped[1].token_ids)
    assert any(lp.logprob == 0.0 for lp in jumped[1].logprobs)  # forced tokens


def test_cancelled_constrained_request_frees_blocks_and_matcher(stack, servicer) -> None:
    fmt = pb.ResponseFormat(json_object=True)
    request = _request("Write a long JSON list of numbers.", fmt, max_new_tokens=400)
    with grpc.insecure_channel(stack.address) as channel:
        call = stack.stub(channel).Generate(request, timeout=60)
        next(call)  # running, with its matcher on the worker
        assert _num_matchers(servicer) == 1
        call.cancel()
    stats = _wait_idle(stack)
    assert stats.workers[0].used_blocks == 0
    assert _num_matchers(servicer) == 0


def _num_matchers(servicer) -> int:
    tables = servicer.live_tables()
    return sum(1 for t in tables for s in t.states() if s.grammar is not None)


def _wait_idle(stack):
    import time

    for _ in range(200):
        stats = stack.engine.stats()
        if stats.running == 0 and stats.workers[0].used_blocks == 0 and not _busy(stack):
            return stats
        time.sleep(0.05)
    return stats


def _busy(stack) -> bool:
    return _num_matchers(stack.servicer) > 0

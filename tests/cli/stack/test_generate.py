"""`yaie generate` streams what the API streams; --json gives one parseable object per frame."""

from __future__ import annotations

import json
import re
import subprocess

import grpc
import pytest

from yaie.v1 import generation_pb2 as pb

PROMPT = "The morning train"


def _api_greedy(stack, max_new_tokens: int) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(
        text=PROMPT,
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new_tokens),
    )
    with grpc.insecure_channel(stack.target) as channel:
        return list(stack.stub(channel).Generate(request, timeout=60))


def _generate_greedy(tools, stack, max_new_tokens: int, *args: str) -> subprocess.CompletedProcess:
    """`yaie generate PROMPT` at temperature 0 against stack."""
    return tools.run_yaie(
        "generate",
        PROMPT,
        "--target",
        stack.target,
        "--temperature",
        "0",
        "--max-new-tokens",
        str(max_new_tokens),
        *args,
    )


def test_generate_json_prints_one_object_per_frame(llama_stack, tools) -> None:
    result = _generate_greedy(tools, llama_stack, 12, "--json", "--wait", "30")
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    expected = _api_greedy(llama_stack, 12)
    assert [t for f in frames for t in f.get("token_ids", [])] == [
        t for f in expected for t in f.token_ids
    ]
    assert "".join(f.get("text", "") for f in frames) == "".join(f.text for f in expected)
    assert frames[-1]["finish_reason"] in ("FINISH_REASON_LENGTH", "FINISH_REASON_STOP")
    assert all(f["usage"]["prompt_tokens"] > 0 for f in frames)


def test_generate_streams_plain_text_and_reports_errors(llama_stack, tools) -> None:
    result = _generate_greedy(tools, llama_stack, 12)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f.text for f in _api_greedy(llama_stack, 12)) + "\n"
    assert "tokens after a" in result.stderr
    bad = tools.run_yaie("generate", PROMPT, "--target", llama_stack.target, "--top-p", "0")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "top_p" in bad.stderr


INVALID = [
    pb.GenerateRequest(),
    pb.GenerateRequest(token_ids=pb.TokenIds(ids=[10**6])),
    pb.GenerateRequest(text="a", sampling=pb.SamplingParams(temperature=-1.0)),
    pb.GenerateRequest(text="a", sampling=pb.SamplingParams(repetition_penalty=0.0)),
    pb.GenerateRequest(text="a", stopping=pb.StoppingCriteria(stop=[""])),
    pb.GenerateRequest(text="a", stopping=pb.StoppingCriteria(max_new_tokens=10**6)),
    pb.GenerateRequest(text="a", output=pb.OutputOptions(top_logprobs=21)),
]


@pytest.mark.parametrize("request_", INVALID, ids=range(len(INVALID)))
def test_the_real_stack_refuses_bad_requests_then_serves(llama_stack, request_) -> None:
    with grpc.insecure_channel(llama_stack.target) as channel:
        stub = llama_stack.stub(channel)
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(request_, timeout=30))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _api_greedy(llama_stack, 2)[-1].usage.completion_tokens >= 1


def test_a_stop_string_across_tokens_ends_the_real_stream_before_it(llama_stack) -> None:
    frames = _api_greedy(llama_stack, 16)
    full = "".join(f.text for f in frames)
    ends = [len("".join(f.text for f in frames[: i + 1])) for i in range(len(frames))]
    boundary = next(end for end in ends[1:] if 0 < end < len(full))  # between two tokens
    stop = full[boundary - 1 : boundary + 1]
    request = pb.GenerateRequest(
        text=PROMPT,
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=16, stop=[stop]),
        output=pb.OutputOptions(top_logprobs=3),
    )
    with grpc.insecure_channel(llama_stack.target) as channel:
        stopped = list(llama_stack.stub(channel).Generate(request, timeout=60))
    assert "".join(f.text for f in stopped) == full[: full.find(stop)]
    assert (stopped[-1].finish_reason, stopped[-1].matched_stop) == (pb.FINISH_REASON_STOP, stop)
    for frame in stopped:  # greedy: the chosen token is the most likely one
        assert [lp.token_id for lp in frame.logprobs] == list(frame.token_ids)
        assert all(len(lp.top) == 3 and lp.top[0].token_id == lp.token_id for lp in frame.logprobs)


def test_a_request_too_long_for_the_kv_pool_is_resource_exhausted(llama_stack) -> None:
    request = pb.GenerateRequest(text=PROMPT, stopping=pb.StoppingCriteria(max_new_tokens=1600))
    with grpc.insecure_channel(llama_stack.target) as channel:
        stub = llama_stack.stub(channel)
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(request, timeout=30))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.GetServerStats(pb.GetServerStatsRequest()).workers[0].total_blocks == 96


def test_top_logprobs_without_json_prints_each_tokens_alternatives(llama_stack, tools) -> None:
    result = _generate_greedy(tools, llama_stack, 4, "--top-logprobs", "3")
    assert result.returncode == 0, result.stderr
    text = "".join(f.text for f in _api_greedy(llama_stack, 4))
    assert result.stdout.startswith(text + "\n")
    table = result.stdout[len(text) + 1 :].splitlines()
    assert table[0].split() == ["token", "logprob", "most", "likely"]
    rows = table[1:]
    assert len(rows) == 4 and all(row.count(" | ") == 2 for row in rows)
    for row in rows:  # greedy: the chosen token's logprob is that of the first alternative
        match = re.search(r" (-?\d+\.\d{3})   .*? (-?\d+\.\d{3}) \| ", row)
        assert match and match[1] == match[2], row

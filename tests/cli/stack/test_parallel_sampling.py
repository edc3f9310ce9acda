"""GenerateRequest.n on a real stack (tiny random Llama on CPU): n = 8 seeded completions at
temperature 1 equal the 8 single requests with the derived seeds, the other completions hit the
prompt's blocks, a cancelled n-request leaves no block held; `yaie generate --n`."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from yaie.scheduler_service.engine.request import completion_seed
from yaie.v1 import generation_pb2 as pb

pytestmark = pytest.mark.slow
PROMPT = list(range(3, 3 + 16 * 3 + 5))  # 53 tokens: 3 full blocks of 16 and a partial one


def _request(n: int, seed: int, max_new: int = 10) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=PROMPT),
        sampling=pb.SamplingParams(temperature=1.0, seed=seed),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True),
        output=pb.OutputOptions(single_frame=True),
        n=n,
    )


def _idle(stub) -> pb.ServerStats:
    for _ in range(200):
        stats = stub.GetServerStats(pb.GetServerStatsRequest())
        if stats.running == 0 and stats.waiting == 0:
            break
        time.sleep(0.02)
    return stats


def test_n8_equals_8_single_requests_with_derived_seeds(llama_stack) -> None:
    with grpc.insecure_channel(llama_stack.target) as channel:
        stub = llama_stack.stub(channel)
        frames = list(stub.Generate(_request(8, 4242), timeout=120))
        assert [f.index for f in frames] == list(range(8))
        for i, frame in enumerate(frames):
            alone = list(stub.Generate(_request(1, completion_seed(4242, i)), timeout=60))
            assert len(alone) == 1 and alone[0].index == 0
            assert list(frame.token_ids) == list(alone[0].token_ids)
            assert frame.finish_reason == pb.FINISH_REASON_LENGTH
            assert frame.usage.prompt_tokens == 53 and frame.usage.completion_tokens == 10
            if i:  # the prompt was computed once, by completion 0: the others hit its blocks
                assert frame.usage.cached_tokens == 48
        assert len({tuple(f.token_ids) for f in frames}) > 1  # temperature 1: they differ
        assert _idle(stub).workers[0].used_blocks == 0


def test_cancel_of_an_n_request_frees_every_block(llama_stack) -> None:
    with grpc.insecure_channel(llama_stack.target) as channel:
        stub = llama_stack.stub(channel)
        request = _request(6, 9, max_new=400)
        request.output.single_frame = False
        call = stub.Generate(request, timeout=120)
        indexes = set()
        for frame in call:
            indexes.add(frame.index)
            if len(indexes) == 6:
                break
        call.cancel()
        stats = _idle(stub)
        assert stats.running == 0 and stats.workers[0].used_blocks == 0


def test_generate_n_prints_each_completion(llama_stack, tools) -> None:
    common = ("--target", llama_stack.target, "--max-new-tokens", "4", "--seed", "3")
    result = tools.run_yaie("generate", "Hello there", *common, "--n", "3", "--json")
    assert result.returncode == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert {f.get("index", 0) for f in frames} == {0, 1, 2}
    result = tools.run_yaie("generate", "Hello there", *common, "--n", "3")
    assert result.returncode == 0, result.stderr
    headers = sorted(line for line in result.stdout.splitlines() if line.startswith("---"))
    assert headers == [f"--- completion {i} ---" for i in range(3)]  # each once it ended
    assert result.stderr.count("[completion ") == 3
    bad = tools.run_yaie("generate", "Hello there", *common, "--n", "65")
    assert bad.returncode != 0 and "n must be at most 64" in bad.stderr

"""`yaie serve --tp 2`: each worker is a tensor-parallel group of two processes (gloo on the
CPU). Greedy streams equal transformers' generate (as the one-process stacks of test_serve do),
SIGTERM leaves no rank behind, and a model two ranks cannot split fails with the reason."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import torch

from yaie.v1 import generation_pb2 as pb

PROMPT_IDS = [3 + (i * 71 + i * i * 7) % 697 for i in range(19)]
NUM_NEW_TOKENS = 16


def descendants(tools, pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in tools.child_pids(parent)]
        found += frontier
    return found


def wait_gone(tools, pids: list[int], timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in pids if tools.is_running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def transformers_greedy(model_dir: Path) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT_IDS]), do_sample=False,
                             max_new_tokens=NUM_NEW_TOKENS)  # fmt: skip
    return out[0, len(PROMPT_IDS) :].tolist()


@pytest.mark.parametrize(
    "architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]
)
def test_tp2_stack_streams_transformers_greedy_tokens_and_stops_every_rank(
    architecture: str, model_dirs: dict[str, Path], tools
) -> None:
    request = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=PROMPT_IDS),
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=NUM_NEW_TOKENS, ignore_eos=True),
    )
    with tools.running_stack(model_dirs[architecture], "--tp", "2") as stack:
        processes = descendants(tools, stack.process.pid)
        with grpc.insecure_channel(stack.target) as channel:
            frames = list(stack.stub(channel).Generate(request, timeout=120))
        stack.process.terminate()
        assert stack.process.wait(30) == 0
    assert len(processes) == 2  # rank 0 (the worker the scheduler sees) and rank 1
    assert wait_gone(tools, processes) == []
    assert [t for f in frames for t in f.token_ids] == transformers_greedy(model_dirs[architecture])
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH


def test_a_model_two_ranks_cannot_split_fails_with_the_reason(
    tmp_path_factory: pytest.TempPathFactory, tools
) -> None:
    from yaie.cli.builtin_model import write_random_model

    model = write_random_model(tmp_path_factory.mktemp("kv1"), num_key_value_heads=1)
    command = tools.yaie("serve", "--model", str(model), "--port", str(tools.free_port()),
                         "--device", "cpu", "--tp", "2", "--log-level", "WARNING")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "tensor parallelism 2 needs num_key_value_heads (1) divisible by 2" in result.stderr

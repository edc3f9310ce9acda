"""`yaie serve --tp 2`: each worker is a tensor-parallel group of two processes (gloo on the
CPU). Greedy streams equal transformers' generate (as the one-process stacks of test_serve do),
SIGTERM leaves no rank behind; `yaie worker --tp 2` refuses a model it cannot split, saying why."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import grpc
import pytest
import torch

from yaie.v1 import generation_pb2 as pb

PROMPT_IDS = [3 + (i * 71 + i * i * 7) % 697 for i in range(19)]
NUM_NEW_TOKENS = 16
ARCHITECTURES = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]


def transformers_greedy(model_dir: Path) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(
            torch.tensor([PROMPT_IDS]), do_sample=False, max_new_tokens=NUM_NEW_TOKENS
        )
    return out[0, len(PROMPT_IDS) :].tolist()


def start_stack(tools, model: Path) -> tuple[subprocess.Popen, str]:
    """`yaie serve --tp 2` on a free port (not yet SERVING)."""
    port = tools.free_port()
    command = tools.serve_command(model, port, 64, "--tp", "2", "--log-level", "WARNING")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL), f"127.0.0.1:{port}"


def test_tp2_stacks_stream_transformers_greedy_tokens_and_stop_every_rank(
    model_dirs: dict[str, Path], tools
) -> None:
    """Llama, Qwen2 (q/k/v biases) and Qwen3 (q/k norm), three stacks started side by side."""
    from yaie.cli.health_probe import wait_for_serving
    from yaie.v1 import generation_pb2_grpc

    request = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=PROMPT_IDS),
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=NUM_NEW_TOKENS, ignore_eos=True),
    )
    stacks = {arch: start_stack(tools, model_dirs[arch]) for arch in ARCHITECTURES}
    frames, processes = {}, []
    try:
        for arch, (process, target) in stacks.items():
            wait_for_serving(target, 180.0)
            processes += tools.descendants(process.pid)
            with grpc.insecure_channel(target) as channel:
                stub = generation_pb2_grpc.GenerationStub(channel)
                frames[arch] = list(stub.Generate(request, timeout=120))
    finally:
        for process, _ in stacks.values():
            process.terminate()
        status = {arch: tools.stop(process) for arch, (process, _) in stacks.items()}
    assert status == dict.fromkeys(ARCHITECTURES, 0)
    assert len(processes) == 2 * len(ARCHITECTURES)  # per stack: rank 0 (the worker), rank 1
    assert tools.wait_gone(processes) == []
    for arch in ARCHITECTURES:
        assert [t for f in frames[arch] for t in f.token_ids] == transformers_greedy(
            model_dirs[arch]
        ), arch
        assert frames[arch][-1].finish_reason == pb.FINISH_REASON_LENGTH


def test_a_model_two_ranks_cannot_split_fails_with_the_reason(
    tmp_path_factory: pytest.TempPathFactory, tools
) -> None:
    """`yaie worker --tp 2` refuses a model with one KV head before it starts any other rank."""
    from yaie.cli.models.random_model import write_random_model

    model = write_random_model(tmp_path_factory.mktemp("kv1"), num_key_value_heads=1)
    worker = ("worker", "--model", str(model), "--port", "0", "--device", "cpu", "--tp", "2")
    result = tools.run_yaie(*worker, "--log-level", "WARNING")
    assert result.returncode == 1
    assert "tensor parallelism 2 needs num_key_value_heads (1) divisible by 2" in result.stderr

"""A Node client written from the .proto files alone (@grpc/grpc-js) streams a generation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc

from yaie.v1 import generation_pb2 as pb

NODE_DIR = Path(__file__).resolve().parents[2] / "node"
PROMPT = "Numbers are useful"


def test_node_grpc_js_client_streams_the_same_greedy_generation(llama_stack) -> None:
    node = shutil.which("node")
    assert node, "node is not installed: install Node.js, then `npm ci --prefix tests/node`"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "tests/node has no node_modules: run `npm ci --prefix tests/node` first"
    )
    command = [node, str(NODE_DIR / "client.js"), llama_stack.target, PROMPT, "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    info, *frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert info["architecture"] == "LlamaForCausalLM" and info["random_weights"] is True
    request = pb.GenerateRequest(
        text=PROMPT,
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=10),
    )
    with grpc.insecure_channel(llama_stack.target) as channel:
        expected = list(llama_stack.stub(channel).Generate(request, timeout=60))
    assert [t for f in frames for t in f["token_ids"]] == [t for f in expected for t in f.token_ids]
    assert "".join(f["text"] for f in frames) == "".join(f.text for f in expected)
    assert frames[-1]["finish_reason"] == pb.FinishReason.Name(expected[-1].finish_reason)
    assert [f["finish_reason"] for f in frames[:-1]] == ["FINISH_REASON_UNSPECIFIED"] * (
        len(frames) - 1
    )

"""The real built-in model (SmolLM2-135M-Instruct) behind `yaie serve --http-port`: a greedy chat
answer through the openai client equals the gRPC API's for the same messages, streamed or not."""

from __future__ import annotations

import os
import socket
import subprocess

import grpc
import openai
import pytest

from yaie.cli.health_probe import wait_for_serving
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc
from yaie.worker_service.python_child import module_command

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_greedy_chat_equals_grpc(builtin_cache):
    port, http_port = _free_port(), _free_port()
    command = module_command("yaie.cli.main", "serve", "--device", "cpu")
    command += ["--port", str(port), "--http-port", str(http_port), "--log-level", "WARNING"]
    env = {**os.environ, "YAIE_CACHE": str(builtin_cache), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        wait_for_serving(f"127.0.0.1:{port}", 300)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = pb.GenerateRequest(
                messages=pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in MESSAGES]),
                sampling=pb.SamplingParams(temperature=0),
                stopping=pb.StoppingCriteria(max_new_tokens=24),
                output=pb.OutputOptions(skip_special_tokens=True, single_frame=True),
            )
            expected = list(generation_pb2_grpc.GenerationStub(channel).Generate(request))[-1]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="-")
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=MESSAGES, temperature=0, max_tokens=24
        )
        assert "Paris" in expected.text
        assert reply.choices[0].message.content == expected.text
        stream = client.chat.completions.create(
            model=model, messages=MESSAGES, temperature=0, max_tokens=24, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == expected.text
    finally:
        process.terminate()
        process.wait(30)

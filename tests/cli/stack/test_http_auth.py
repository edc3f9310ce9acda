"""One API key table for both APIs: with --api-key-file, the HTTP API wants `Authorization:
Bearer KEY` on /v1 (401 with OpenAI's error body otherwise) and gRPC wants the same key;
/health stays open, as grpc.health.v1 does."""

from __future__ import annotations

import grpc
import httpx
import openai
import pytest

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

pytestmark = pytest.mark.slow
KEY = "s3cret-key"


def test_api_key_on_both_apis(tools, model_dirs, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    port = tools.free_port()
    model = model_dirs["LlamaForCausalLM"]
    extra = ("--http-port", str(port), "--api-key-file", str(key_file))
    with tools.running_stack(model, *extra) as stack:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            reply = httpx.get(f"{url}/v1/models", headers=headers)
            assert reply.status_code == 401
            assert reply.json()["error"]["code"] == "invalid_api_key"
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.completions.create(model="", prompt="hi", max_tokens=2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        reply = client.completions.create(model="", prompt="hi", max_tokens=2)
        assert reply.usage.completion_tokens == 2
        with grpc.insecure_channel(stack.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(
                pb.GetModelInfoRequest(), metadata=(("authorization", f"Bearer {KEY}"),)
            )
            assert client.models.list().data[0].id == info.model
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetModelInfo(pb.GetModelInfoRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

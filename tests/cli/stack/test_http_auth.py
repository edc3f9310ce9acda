"""One API key table for both APIs: with --api-key-file, the HTTP API wants `Authorization:
Bearer KEY` on /v1 (401 with OpenAI's error body otherwise) and gRPC wants the same key;
/health stays open, as grpc.health.v1 does. The table is tenants', re-read on SIGHUP."""

from __future__ import annotations

import signal
import time

import grpc
import httpx
import openai
import pytest

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

pytestmark = pytest.mark.slow
KEY = "s3cret-key"


def test_api_keys_of_tenants_on_both_apis_reloaded_on_sighup(tools, model_dirs, tmp_path):
    """TENANT: KEY lines work on both APIs; a non-admin sees no worker address; SIGHUP to
    `yaie serve` re-reads the file (a new key works at once, a removed one is refused)."""
    key_file = tmp_path / "keys"
    key_file.write_text(f"alice: {KEY}\nops: sk-ops-1 admin\n")
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

        def http_status(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.get(f"{url}/v1/models", headers=headers, timeout=10).status_code

        with grpc.insecure_channel(stack.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)

            def addresses(key: str) -> list[str]:
                metadata = (("authorization", f"Bearer {key}"),)
                stats = stub.GetServerStats(pb.GetServerStatsRequest(), metadata=metadata)
                return [worker.address for worker in stats.workers]

            assert addresses(KEY) == ["worker-0"]
            assert addresses("sk-ops-1")[0].startswith("127.0.0.1:")
            assert http_status(KEY) == 200 and http_status("sk-bob-1") == 401
            key_file.write_text("ops: sk-ops-1 admin\nbob: sk-bob-1\n")
            stack.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while http_status("sk-bob-1") != 200:
                assert time.monotonic() < deadline, "the key file was not reloaded"
                time.sleep(0.1)
            assert http_status(KEY) == 401
            with pytest.raises(grpc.RpcError) as refused:
                addresses(KEY)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert addresses("sk-bob-1") == ["worker-0"]
        assert stack.process.poll() is None  # SIGHUP did not stop the stack

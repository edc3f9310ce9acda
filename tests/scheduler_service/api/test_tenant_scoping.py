"""Tenants over a real engine (fake workers): a request id is the caller's own (another tenant's
Abort does not find it, nor does its duplicate check see it), each tenant has its own prefix
cache, limits answer RESOURCE_EXHAUSTED, ServerStats shows worker addresses to admins only, and
logs and metrics name the tenant. The HTTP API scopes the same way."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager

import grpc
import httpx
import pytest
import served_stack
from fake_worker import FakeWorkerConfig

from yaie.scheduler_service.api.frontend import Frontend
from yaie.scheduler_service.api.http.routes import create_app
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.ops.auth import ApiKeyInterceptor, KeyTable
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

KEYS = """\
# tenant: key [options]
alice: sk-alice-0001
bob: sk-bob-0002 max_concurrent=2
queued: sk-queued-0003 max_queued=1
ops: sk-ops-0004 admin
"""
PROMPT = list(range(100, 164))  # 64 tokens: 16 full blocks of the fake worker's 4


def _md(tenant: str) -> tuple:
    key = {"alice": "sk-alice-0001", "bob": "sk-bob-0002", "queued": "sk-queued-0003"}
    key["ops"] = "sk-ops-0004"
    return (("authorization", f"Bearer {key[tenant]}"),)


def _request(
    request_id: str = "", max_new_tokens: int = 180, salt: str = "", prompt: list[int] = PROMPT
) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=request_id,
        token_ids=pb.TokenIds(ids=prompt),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new_tokens, ignore_eos=True),
        cache_salt=salt,
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> KeyTable:
    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text(KEYS)
    return KeyTable(str(path), environ={})


@contextmanager
def _served(tokenizer, keys: KeyTable, config: SchedulerConfig | None = None):
    worker = FakeWorkerConfig(vocab_size=768, max_context=256, num_blocks=128, step_delay_s=0.02)
    with served_stack.served_stack(
        tokenizer,
        interceptors=[ApiKeyInterceptor(keys)],
        with_metrics=True,
        worker=worker,
        config=config,
    ) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            stack.stub = generation_pb2_grpc.GenerationStub(channel)
            yield stack


@pytest.fixture(scope="module")
def stack(tokenizer, keys):
    with _served(tokenizer, keys) as stack:
        yield stack


def _started(stub, tenant: str, request: pb.GenerateRequest):
    """A Generate stream of tenant that has produced its first frame (its request is live)."""
    stream = stub.Generate(request, metadata=_md(tenant), timeout=60)
    next(stream)
    return stream


def test_request_ids_are_the_callers_own(stack) -> None:
    stub = stack.stub
    alices = _started(stub, "alice", _request("shared-id"))
    try:
        found = stub.Abort(pb.AbortRequest(request_id="shared-id"), metadata=_md("bob"))
        assert not found.found  # bob cannot end alice's request, nor learn that it is live
        bobs = list(stub.Generate(_request("shared-id", 3), metadata=_md("bob"), timeout=60))
        assert bobs[-1].finish_reason == pb.FINISH_REASON_LENGTH  # no "already live" for bob
        with pytest.raises(grpc.RpcError) as duplicate:  # alice's own duplicate is refused
            list(stub.Generate(_request("shared-id", 3), metadata=_md("alice"), timeout=60))
        assert duplicate.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = stub.Abort(pb.AbortRequest(request_id="shared-id"), metadata=_md("alice"))
        assert found.found
        rest = list(alices)
        assert rest[-1].finish_reason == pb.FINISH_REASON_ABORT
    finally:
        alices.cancel()


def test_each_tenant_has_its_own_prefix_cache(stack) -> None:
    prompt = list(range(300, 364))  # no other test's

    def cached(tenant: str, salt: str = "") -> int:
        request = _request("", 2, salt, prompt)
        frames = list(stack.stub.Generate(request, metadata=_md(tenant), timeout=60))
        return frames[-1].usage.cached_tokens

    assert cached("alice") == 0
    assert cached("ops") == 0  # alice's blocks are not ops's
    assert cached("alice") >= 60  # alice's own prefix hits
    assert cached("alice", "narrower") == 0  # a salt narrows alice's namespace further


def test_a_tenant_at_its_concurrency_limit_gets_resource_exhausted(stack) -> None:
    stub = stack.stub
    streams = [_started(stub, "bob", _request()) for _ in range(2)]
    try:
        _assert_at_limit(stub, "bob")
    finally:
        for stream in streams:
            stream.cancel()


def test_a_tenant_at_its_queue_limit_gets_resource_exhausted(tokenizer, keys) -> None:
    """One request running (max_running_requests=1), one waiting: a third is refused."""
    with _served(tokenizer, keys, SchedulerConfig(max_running_requests=1)) as stack:
        stub = stack.stub
        running = _started(stub, "queued", _request())
        waiting = stub.Generate(_request(), metadata=_md("queued"), timeout=60)
        try:
            deadline = time.monotonic() + 30
            while stack.call(_tenant_load(stack.engine, "queued")) != (2, 1):
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.02)
            _assert_at_limit(stub, "queued")
        finally:
            running.cancel()
            waiting.cancel()


def _assert_at_limit(stub, tenant: str) -> None:
    """tenant's next request is refused, naming it; another tenant's is served."""
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(_request("", 2), metadata=_md(tenant), timeout=60))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert tenant in error.value.details()
    assert list(stub.Generate(_request("", 2), metadata=_md("alice"), timeout=60))


async def _tenant_load(engine, tenant: str) -> tuple[int, int]:
    return engine.tenant_load(tenant)


def test_worker_addresses_are_shown_to_admins_only(stack) -> None:
    address = stack.workers[0].address
    alice = stack.stub.GetServerStats(pb.GetServerStatsRequest(), metadata=_md("alice"))
    ops = stack.stub.GetServerStats(pb.GetServerStatsRequest(), metadata=_md("ops"))
    assert [w.address for w in alice.workers] == ["worker-0"]
    assert [w.address for w in ops.workers] == [address]
    assert alice.workers[0].total_blocks == ops.workers[0].total_blocks == 128


def test_logs_and_metrics_name_the_tenant(stack, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="yaie.requests"):
        list(stack.stub.Generate(_request("logged", 2), metadata=_md("ops"), timeout=60))
    finishes = [r.fields for r in caplog.records if r.getMessage().startswith("request finish")]
    assert any(f["request_id"] == "logged" and f["tenant"] == "ops" for f in finishes)
    registry = stack.metrics.registry
    value = registry.get_sample_value(
        "yaie_tenant_requests_total", {"tenant": "ops", "outcome": "length"}
    )
    assert value is not None and value >= 1
    tokens = registry.get_sample_value(
        "yaie_tenant_tokens_total", {"tenant": "ops", "kind": "completion"}
    )
    assert tokens is not None and tokens >= 2


def test_the_http_api_scopes_by_tenant_too(stack, tokenizer, keys) -> None:
    async def calls() -> list[httpx.Response]:
        app = create_app(Frontend(stack.engine, tokenizer), keys, None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"model": "", "prompt": list(range(200, 264)), "max_tokens": 2}
            replies = []
            for key in ("sk-alice-0001", "sk-alice-0001", "sk-ops-0004", "wrong"):
                headers = {"Authorization": f"Bearer {key}"}
                replies.append(await client.post("/v1/completions", json=body, headers=headers))
            return replies

    first, again, other, wrong = stack.call(calls())
    assert [r.status_code for r in (first, again, other)] == [200, 200, 200], first.text
    assert wrong.status_code == 401
    usage = [json.loads(r.text)["usage"] for r in (first, again, other)]
    # alice's second request hits alice's cached prompt; ops's (its own namespace) does not.
    assert usage[1]["prompt_tokens_details"]["cached_tokens"] >= 60
    assert usage[2]["prompt_tokens_details"]["cached_tokens"] == 0

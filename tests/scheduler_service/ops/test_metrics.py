"""The Prometheus endpoint exposes request outcomes, token counters, TTFT / ITL histograms and
the engine's gauges (queue, KV blocks per worker, cache hit rate, worker health) after a request;
the request log has one start and one finish line per call, with its request id."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request

import grpc
import pytest
import served_stack
from prometheus_client.parser import text_string_to_metric_families

from yaie.scheduler_service.ops.logs import JsonFormatter, observe_generate, setup_logging
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _scrape_when_counted(port: int, outcome: str, timeout_s: float = 5.0) -> dict[str, list]:
    """_scrape once a request with outcome is counted: the server records a call's outcome
    after its status went out, so the client may see the status first."""
    deadline = time.monotonic() + timeout_s
    while True:
        families = _scrape(port)
        labels = [s.labels.get("outcome") for s in families.get("yaie_requests", [])]
        if outcome in labels or time.monotonic() > deadline:
            return families
        time.sleep(0.02)


def _value(samples: list, name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def test_metrics_endpoint_exposes_the_named_series(tokenizer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="yaie.requests")
    with served_stack.served_stack(tokenizer, with_metrics=True) as stack:
        port = stack.metrics.serve(0)
        with grpc.insecure_channel(stack.address) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            request = pb.GenerateRequest(
                request_id="metrics-1",
                token_ids=pb.TokenIds(ids=list(range(10, 30))),
                # ignore_eos: the seed is random, and a drawn EOS would end it before LENGTH
                stopping=pb.StoppingCriteria(max_new_tokens=5, ignore_eos=True),
            )
            frames = list(stub.Generate(request, timeout=10))
            assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
            with pytest.raises(grpc.RpcError):  # an invalid request counts by its status
                list(stub.Generate(pb.GenerateRequest(text=""), timeout=10))
        families = _scrape_when_counted(port, "invalid_argument")
    worker = stack.workers[0].address
    requests = families["yaie_requests"]
    assert _value(requests, "yaie_requests_total", outcome="length") == 1
    assert _value(requests, "yaie_requests_total", outcome="invalid_argument") == 1
    assert _value(families["yaie_prompt_tokens"], "yaie_prompt_tokens_total") == 20
    assert _value(families["yaie_completion_tokens"], "yaie_completion_tokens_total") == 5
    assert _value(families["yaie_cached_tokens"], "yaie_cached_tokens_total") == 0
    ttft = families["yaie_time_to_first_token_seconds"]
    assert _value(ttft, "yaie_time_to_first_token_seconds_count") == 1
    itl = families["yaie_inter_token_latency_seconds"]
    assert _value(itl, "yaie_inter_token_latency_seconds_count") == 4  # 5 tokens, 4 gaps
    assert _value(families["yaie_queue_waiting"], "yaie_queue_waiting") == 0
    blocks = families["yaie_kv_blocks"]
    assert _value(blocks, "yaie_kv_blocks", worker=worker, state="used") == 0
    assert _value(blocks, "yaie_kv_blocks", worker=worker, state="total") == 128
    cached = _value(blocks, "yaie_kv_blocks", worker=worker, state="cached")
    free = _value(blocks, "yaie_kv_blocks", worker=worker, state="free")
    assert cached > 0 and free + cached <= 128
    assert 0 <= _value(families["yaie_cache_hit_rate"], "yaie_cache_hit_rate", worker=worker) <= 1
    assert _value(families["yaie_worker_healthy"], "yaie_worker_healthy", worker=worker) == 1
    lines = [r for r in caplog.records if r.name == "yaie.requests"]
    finish = [r.fields for r in lines if r.getMessage().startswith("request finish")]
    assert {"request_id": "metrics-1", "outcome": "length", "completion_tokens": 5}.items() <= (
        finish[0].items()
    )
    assert sum(r.getMessage().startswith("request start") for r in lines) == 2
    assert finish[1]["outcome"] == "invalid_argument"


def test_json_log_lines_carry_the_request_fields() -> None:
    """--log-format json: one JSON object per line, the request fields at the top level."""
    record = logging.LogRecord(
        "yaie.requests", logging.INFO, __file__, 1, "request finish %s", ("x",), None
    )
    record.fields = {"request_id": "r1", "completion_tokens": 3}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "request finish x" and entry["level"] == "INFO"
    assert entry["request_id"] == "r1" and entry["completion_tokens"] == 3
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml")


def test_every_token_after_the_first_gets_one_inter_token_sample() -> None:
    """Under load a frame merges events its reader had not taken yet, the first frame too: the
    tokens that came with the first one count as gaps of 0, so the ITL histogram always holds
    completion_tokens - 1 samples per request (the count asserted above)."""
    from yaie.scheduler_service.ops.logs import _Trace

    trace = _Trace("merged")
    trace.frame(pb.GenerateResponse(token_ids=[5, 6, 7]))
    trace.frame(pb.GenerateResponse(token_ids=[8, 9]))
    assert len(trace.itl) == 4 and trace.itl[:2] == [0.0, 0.0]
    assert trace.itl[2] == trace.itl[3] >= 0.0


class _EndedContext:
    """The handler context of a call that gRPC ended: no status code set, time_remaining given."""

    def __init__(self, time_remaining: float | None) -> None:
        self._remaining = time_remaining

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def code(self) -> None:
        return None

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(("remaining", "outcome"), [(0.0, "deadline_exceeded"), (None, "error")])
def test_a_call_ended_at_its_deadline_is_logged_as_such(caplog, remaining, outcome) -> None:
    """A Generate that gRPC cancels at the client's deadline logs outcome=deadline_exceeded, not
    error (which stays for an exception with no deadline passed)."""

    async def generate(request, context):
        yield pb.GenerateResponse(token_ids=[1])
        raise asyncio.CancelledError

    async def drive() -> None:
        traced = observe_generate(None)(generate)
        with pytest.raises(asyncio.CancelledError):
            async for _ in traced(pb.GenerateRequest(request_id="late"), _EndedContext(remaining)):
                pass

    caplog.set_level(logging.INFO, logger="yaie.requests")
    asyncio.run(drive())
    finish = [r.fields for r in caplog.records if r.getMessage().startswith("request finish")]
    assert finish[0]["request_id"] == "late" and finish[0]["outcome"] == outcome


def test_engine_gauges_count_requests_per_priority() -> None:
    """yaie_queue_waiting_by_priority / yaie_requests_running_by_priority: one sample per
    priority in the engine's stats, labelled with it."""
    import threading

    from yaie.scheduler_service.engine.stats import EngineStats, PriorityStats
    from yaie.scheduler_service.ops.metrics import EngineCollector

    stats = EngineStats(
        waiting=3,
        running=2,
        num_preemptions=1,
        completed_requests=0,
        workers=[],
        priorities=[PriorityStats(5, 1, 2), PriorityStats(-1, 2, 0)],
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        families = {f.name: f.samples for f in EngineCollector(lambda: stats, loop).collect()}
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    waiting = families["yaie_queue_waiting_by_priority"]
    running = families["yaie_requests_running_by_priority"]
    assert _value(waiting, "yaie_queue_waiting_by_priority", priority="5") == 1
    assert _value(waiting, "yaie_queue_waiting_by_priority", priority="-1") == 2
    assert _value(running, "yaie_requests_running_by_priority", priority="5") == 2
    assert _value(running, "yaie_requests_running_by_priority", priority="-1") == 0

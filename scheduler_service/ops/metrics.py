"""Prometheus metrics of the scheduler (`--metrics-port`): request outcomes, token counters (also
per tenant), TTFT and ITL histograms recorded per Generate call, and engine gauges read from
`engine.stats()` at scrape time (queue, KV blocks per worker, cache hit rate, worker health).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Seconds; TTFT spans queueing and prefill, ITL one decode step.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
SCRAPE_TIMEOUT_S = 2.0


class EngineCollector(Collector):
    """Gauges from a stats snapshot taken on the engine's event loop (stats() is not
    thread-safe; scrapes come on the HTTP server's thread)."""

    def __init__(self, stats: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self._stats = stats
        self._loop = loop

    def _snapshot(self) -> Any | None:
        async def read() -> Any:
            return self._stats()

        try:
            return asyncio.run_coroutine_threadsafe(read(), self._loop).result(SCRAPE_TIMEOUT_S)
        except Exception as exc:  # not started yet, stopping, or the loop is busy
            logger.debug("no engine stats for this scrape: %s", exc)
            return None

    def collect(self) -> Iterator[Metric]:
        stats = self._snapshot()
        if stats is None:
            return
        yield GaugeMetricFamily("yaie_queue_waiting", "Requests waiting", value=stats.waiting)
        yield GaugeMetricFamily("yaie_requests_running", "Requests admitted", value=stats.running)
        yield CounterMetricFamily(
            "yaie_preemptions", "Preemptions since start", value=stats.num_preemptions
        )
        yield from _by_priority(stats.priorities)
        blocks = GaugeMetricFamily(
            "yaie_kv_blocks", "KV blocks by state", labels=["worker", "state"]
        )
        hit_rate = GaugeMetricFamily(
            "yaie_cache_hit_rate", "Cached prompt tokens / prompt tokens", labels=["worker"]
        )
        healthy = GaugeMetricFamily("yaie_worker_healthy", "1 while usable", labels=["worker"])
        for worker in stats.workers:
            for state in ("used", "cached", "free"):
                blocks.add_metric([worker.address, state], getattr(worker, f"{state}_blocks"))
            blocks.add_metric([worker.address, "total"], worker.total_blocks)
            hit_rate.add_metric([worker.address], worker.cache_hit_rate)
            healthy.add_metric([worker.address], 1.0 if worker.healthy else 0.0)
        yield from (blocks, hit_rate, healthy)


def _by_priority(priorities: list[Any]) -> Iterator[Metric]:
    """yaie_queue_waiting and yaie_requests_running split by GenerateRequest.priority."""
    waiting = GaugeMetricFamily(
        "yaie_queue_waiting_by_priority", "Requests waiting, per priority", labels=["priority"]
    )
    running = GaugeMetricFamily(
        "yaie_requests_running_by_priority", "Requests admitted, per priority", labels=["priority"]
    )
    for p in priorities:
        waiting.add_metric([str(p.priority)], p.waiting)
        running.add_metric([str(p.priority)], p.running)
    yield from (waiting, running)


class Metrics:
    """The scheduler's series, in a registry of its own (several servers may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "yaie_requests",
            "Generate calls by outcome (finish reason or status code)",
            ["outcome"],
            registry=r,
        )
        self.prompt_tokens = Counter("yaie_prompt_tokens", "Prompt tokens", registry=r)
        self.completion_tokens = Counter("yaie_completion_tokens", "Tokens out", registry=r)
        self.cached_tokens = Counter(
            "yaie_cached_tokens", "Prompt tokens served from the prefix cache", registry=r
        )
        # Per tenant (one series each: tenants are the key file's, not the callers' choice).
        self.tenant_requests = Counter(
            "yaie_tenant_requests",
            "Generate calls by tenant and outcome",
            ["tenant", "outcome"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            "yaie_tenant_tokens", "Tokens by tenant and kind", ["tenant", "kind"], registry=r
        )
        self.ttft = Histogram(
            "yaie_time_to_first_token_seconds",
            "Call start to the first token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "yaie_inter_token_latency_seconds",
            "Time between streamed tokens",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self._server: Any = None

    def watch_engine(self, stats: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        """Adds the engine gauges (stats() is called on loop at each scrape)."""
        self.registry.register(EngineCollector(stats, loop))

    def record_finished(
        self, outcome: str, prompt: int, completion: int, cached: int, tenant: str = "-"
    ) -> None:
        self.requests.labels(outcome).inc()
        self.tenant_requests.labels(tenant, outcome).inc()
        for kind, count in (("prompt", prompt), ("completion", completion), ("cached", cached)):
            self.tenant_tokens.labels(tenant, kind).inc(count)
        self.prompt_tokens.inc(prompt)
        self.completion_tokens.inc(completion)
        self.cached_tokens.inc(cached)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Starts the HTTP endpoint (GET /metrics) on a daemon thread; returns the bound port."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

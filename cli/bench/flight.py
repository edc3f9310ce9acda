"""How `yaie bench` paces its requests, for every workload: Poisson arrival gaps, a cap on the
requests in flight (counted, with a progress bar), and a run under a deadline whose unfinished
requests count as failed."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from yaie.cli.bench.metrics import BenchMetrics, RequestResult, summarize


def arrival_gaps(n: int, request_rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: exponential gaps (Poisson process), or none."""
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(seed)
    return [rng.expovariate(request_rate) for _ in range(n)]


@dataclass
class RunRecord:
    """What a run saw: per-request results and the run's totals."""

    results: list[RequestResult]
    duration_s: float
    max_in_flight: int
    client_cpu_s: float  # process CPU time (Python and gRPC's threads) while requests ran

    def summary(self) -> BenchMetrics:
        return summarize(self.results, self.duration_s, self.max_in_flight, self.client_cpu_s)


class Flight:
    """Sends requests through call with at most max_concurrency in flight (None: no cap),
    counting the most in flight at once and ticking a progress bar (when shown) per request."""

    def __init__(self, max_concurrency: int | None, total: int, progress: bool) -> None:
        self._limit = asyncio.Semaphore(max_concurrency or total or 1)
        self.in_flight = self.max_in_flight = 0
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="bench", unit="req")

    async def send(
        self,
        call: Callable[[Any, list[RequestResult]], Awaitable[None]],
        message: Any,
        results: list[RequestResult],
    ) -> None:
        """One request (results: one per completion it asks for)."""
        async with self._limit:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await call(message, results)
            finally:
                self.in_flight -= 1
        if self._bar is not None:
            self._bar.update(1)

    async def run(
        self,
        work: Coroutine[Any, Any, None],
        results: list[RequestResult],
        timeout_s: float | None,
    ) -> RunRecord:
        """Runs work (which sends into results) to its end or to timeout_s; then the requests
        still in flight or unsent are cancelled and count as failed."""
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        try:
            await asyncio.wait_for(work, timeout_s)
        except TimeoutError:
            for result in results:
                if not result.ok and not result.error:
                    result.error = f"cancelled: the run's {timeout_s:.0f} s were over"
        duration = time.perf_counter() - wall_start
        cpu = time.process_time() - cpu_start
        if self._bar is not None:
            self._bar.close()
        return RunRecord(results, duration, self.max_in_flight, cpu)

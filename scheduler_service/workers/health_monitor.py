"""Is a worker there? Periodic grpc.health.v1 checks while connected, and the wait (with
backoff) for a lost worker to come back before it rejoins."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.workers.step_plan import WorkerDescription
from yaie.scheduler_service.workers.worker_client import WorkerClient, WorkerStreamError

logger = logging.getLogger(__name__)

_MAX_RETRY_S = 5.0  # reconnect backoff: from the health-check interval, doubling up to this
# A health answer needs no computation (a worker answers it while a long step runs), so it is
# awaited at most this long even when the step deadline is longer: a hung worker is noticed
# within min(step_timeout_s, this) + one interval.
_MAX_HEALTH_TIMEOUT_S = 10.0
_MAX_SETTLE_S = 5.0  # see wait_until_back


async def watch(
    client: WorkerClient,
    config: SchedulerConfig,
    connected: Callable[[], bool],
    on_lost: Callable[[str], None],
) -> None:
    """Polls the worker's health every config.health_check_interval_s while connected(); no
    SERVING answer in time (a dead, hung or draining worker) calls on_lost(reason)."""
    timeout = min(config.step_timeout_s, _MAX_HEALTH_TIMEOUT_S)
    while True:
        await asyncio.sleep(config.health_check_interval_s)
        if not connected():
            continue
        status = await client.health(timeout)
        if status != "SERVING" and connected():
            on_lost(f"health check: {status} (timeout {timeout} s)")


async def wait_until_back(
    client: WorkerClient, config: SchedulerConfig, previous: WorkerDescription, hung: bool
) -> WorkerDescription:
    """Polls with backoff until the worker is SERVING and Describes previous's model again.

    A worker lost by a deadline (hung: e.g. SIGSTOPped) may resume and still launch the plans
    its old stream had queued (at most two), writing K/V into blocks a fresh allocator would
    hand out again: it comes back only after answering SERVING for a settle time of
    min(step_timeout_s, 5 s), by which those plans have run. A worker found not listening in
    between was restarted, with no old plans, and needs none."""
    delay = config.health_check_interval_s
    settle = min(config.step_timeout_s, _MAX_SETTLE_S) if hung else 0.0
    clock = asyncio.get_running_loop()
    serving_since: float | None = None
    while True:
        await asyncio.sleep(delay)
        status = await client.health(min(config.step_timeout_s, 5.0))
        if status != "SERVING":
            delay = min(2 * delay, max(_MAX_RETRY_S, delay))
            serving_since = None
            settle = 0.0 if status == "UNAVAILABLE" else settle  # not listening: restarted
            continue
        serving_since = clock.time() if serving_since is None else serving_since
        if clock.time() - serving_since < settle:
            delay = config.health_check_interval_s
            continue
        try:
            info = await client.describe(config.connect_timeout_s)
        except WorkerStreamError as exc:
            logger.warning("worker %s: %s", previous.address, exc)
            continue
        if (info.model, info.vocab_size, info.max_context) == (
            previous.model,
            previous.vocab_size,
            previous.max_context,
        ):
            return info
        logger.error("worker %s came back serving another model: %s", info.address, info)

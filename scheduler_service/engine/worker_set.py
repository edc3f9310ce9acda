"""The engine's workers by address, and the one code path that adds and removes them: workers
given by --worker at start, workers that join over the internal port (workers/registry.py) and
workers found by DNS (workers/dns_discovery.py) all go through add() and remove().

A worker that is lost stays in the set and is waited for (failover: its requests moved on); a
joined one lost for longer than forget_after_s is removed (it joins again when it is back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.sequence import Sequence
from yaie.scheduler_service.engine.worker_loop import WorkerLoop
from yaie.scheduler_service.workers.step_plan import WorkerDescription
from yaie.scheduler_service.workers.worker_client import WorkerClient, WorkerStreamError

logger = logging.getLogger(__name__)

# Where a worker came from: kept for ever (STATIC), forgotten when lost too long (JOINED), or
# removed when the name stops listing it ("dns:NAME").
STATIC = "static"
JOINED = "joined"
# How long add() waits for a worker to answer SERVING: a join comes from a SERVING worker, and
# DNS or the next join retries one that is not ready yet.
_MAX_SERVING_WAIT_S = 5.0


class IncompatibleWorkerError(ValueError):
    """The worker serves another model (or context, vocabulary) than the set already does."""


@dataclass
class Member:
    loop: WorkerLoop
    origin: str
    tasks: list[asyncio.Task] = field(default_factory=list)


@dataclass(frozen=True)
class LeaveOutcome:
    known: bool
    num_finished: int = 0  # requests that finished on the worker while it drained
    num_moved: int = 0  # unfinished requests handed back to the engine for another worker


class WorkerSet:
    """Members by address. The engine routes to routable() ones and hands in its callbacks."""

    def __init__(
        self,
        config: SchedulerConfig,
        client_factory: Callable[[str], WorkerClient],
        on_finished: Callable[[Sequence], None],
        on_orphaned: Callable[[list[Sequence]], None],
        on_rejoined: Callable[[WorkerLoop], None],
        forget_after_s: float = 30.0,
    ) -> None:
        self.config = config
        self.forget_after_s = forget_after_s
        self._client_factory = client_factory
        self._on_finished = on_finished
        self._on_orphaned = on_orphaned
        self._on_rejoined = on_rejoined
        self._members: dict[str, Member] = {}
        self._adding: dict[str, asyncio.Future] = {}  # address -> its add() in progress
        self.first: WorkerDescription | None = None  # the first worker's Describe: the model
        self.described = asyncio.Event()  # set once first is known

    def __iter__(self) -> Iterator[WorkerLoop]:
        return (member.loop for member in self._members.values())

    def __len__(self) -> int:
        return len(self._members)

    def get(self, address: str) -> WorkerLoop | None:
        member = self._members.get(address)
        return member.loop if member is not None else None

    def origin(self, address: str) -> str | None:
        member = self._members.get(address)
        return member.origin if member is not None else None

    def routable(self) -> list[WorkerLoop]:
        """Workers new requests may go to: connected and not leaving."""
        return [loop for loop in self if loop.healthy and not loop.leaving]

    async def add(self, address: str, origin: str) -> bool:
        """Connects to address, Describes it and starts its step loop and health checks;
        False when it was known already. Raises WorkerStreamError (unreachable, not SERVING,
        another protocol) or IncompatibleWorkerError; the set is then unchanged."""
        if address in self._members:
            return False
        if address in self._adding:  # a concurrent add of the same address: share its outcome
            await asyncio.shield(self._adding[address])
            return False
        future = asyncio.get_running_loop().create_future()
        self._adding[address] = future
        try:
            await self._connect(address, origin)
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failed add with no concurrent waiter logs nothing
            raise
        finally:
            del self._adding[address]
        return True

    async def _connect(self, address: str, origin: str) -> None:
        client = self._client_factory(address)
        try:
            await self._until_serving(client)
            info = await client.describe(self.config.connect_timeout_s)
            self._check_compatible(info)
        except BaseException:
            await client.close()
            raise
        self.first = self.first or info
        client.open_stream()
        loop = WorkerLoop(
            client, info, self.config, self._on_finished, self._on_orphaned, self._on_rejoined
        )
        member = Member(loop, origin)
        member.tasks = [
            asyncio.create_task(loop.run(), name=f"worker {address}"),
            asyncio.create_task(loop.watch_health(), name=f"health checks {address}"),
        ]
        self._members[address] = member
        self.described.set()
        logger.info(
            "worker %s (%s) added: %s (%s), %d blocks of %d tokens; %d worker(s)",
            address,
            origin,
            info.model,
            info.device,
            info.num_blocks,
            info.block_size,
            len(self._members),
        )
        self._on_rejoined(loop)  # parked requests may go there now

    async def _until_serving(self, client: WorkerClient) -> None:
        """Polls the worker's health for up to min(connect_timeout_s, 5 s) until SERVING (a
        fresh channel's first call can fail while it connects); WorkerStreamError after."""
        clock = asyncio.get_running_loop()
        deadline = clock.time() + min(self.config.connect_timeout_s, _MAX_SERVING_WAIT_S)
        while True:
            status = await client.health(max(0.1, deadline - clock.time()))
            if status == "SERVING":
                return
            if clock.time() >= deadline:
                raise WorkerStreamError(f"worker {client.address} is not SERVING ({status})")
            await asyncio.sleep(0.2)

    def _check_compatible(self, info: WorkerDescription) -> None:
        first = self.first
        if first is None:
            return
        if (info.model, info.vocab_size, info.max_context) != (
            first.model,
            first.vocab_size,
            first.max_context,
        ):
            raise IncompatibleWorkerError(
                f"worker {info.address} serves {info.model} (vocabulary {info.vocab_size}, "
                f"context {info.max_context}), the others {first.model} (vocabulary "
                f"{first.vocab_size}, context {first.max_context})"
            )

    async def remove(self, address: str, drain_s: float = 0.0) -> LeaveOutcome:
        """Takes address out: nothing new is routed to it at once (its queued requests move
        now), its running requests go on for up to drain_s, then the unfinished ones move to
        the other workers (on_orphaned) and its stream and channel close."""
        member = self._members.get(address)
        if member is None or member.loop.leaving:
            return LeaveOutcome(known=member is not None)
        loop = member.loop
        loop.leaving = True
        self._on_orphaned(loop.take_waiting())
        num_running = len(loop.running)
        clock = asyncio.get_running_loop()
        deadline = clock.time() + max(0.0, drain_s)
        while (loop.running or loop.retiring) and loop.healthy and clock.time() < deadline:
            await asyncio.sleep(0.05)
        await _cancel(member.tasks)
        orphans = loop.evict()
        del self._members[address]
        await loop.client.close()
        logger.info(
            "worker %s removed (%d finished there while draining, %d moved); %d worker(s)",
            address,
            max(0, num_running - len(orphans)),
            len(orphans),
            len(self._members),
        )
        self._on_orphaned(orphans)
        return LeaveOutcome(True, max(0, num_running - len(orphans)), len(orphans))

    async def forget_lost(self) -> None:
        """Until cancelled: a joined worker lost for over forget_after_s is removed."""
        clock = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.forget_after_s / 4))
            for address, member in list(self._members.items()):
                lost_at = member.loop.lost_at
                gone = lost_at is not None and clock.time() - lost_at > self.forget_after_s
                if member.origin == JOINED and gone:
                    logger.warning("worker %s lost too long: forgotten", address)
                    await self.remove(address)

    async def stop(self) -> None:
        """Cancels every member's tasks and closes the channels (the engine ends requests)."""
        await _cancel([task for member in self._members.values() for task in member.tasks])
        await asyncio.gather(*(member.loop.client.close() for member in self._members.values()))


async def _cancel(tasks: list[asyncio.Task]) -> None:
    """Cancels tasks and waits for them (again should a library call swallow a cancel)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)

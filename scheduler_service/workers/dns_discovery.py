"""Workers found by DNS (--worker-dns NAME:PORT, e.g. a Kubernetes headless Service): the name
is resolved every interval_s seconds and the worker set follows its addresses (new ones added,
vanished ones removed after a drain), through the engine's add_worker / remove_worker.

A resolution that fails keeps the set as it is (a DNS hiccup must not drop every worker; a dead
worker is failover's business). The resolver is a parameter so tests can change the answer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from yaie.scheduler_service.workers.registry import WorkerSetOwner, check_address
from yaie.scheduler_service.workers.worker_client import WorkerStreamError

logger = logging.getLogger(__name__)

# host name -> its IP addresses (raises OSError when it cannot be resolved)
Resolver = Callable[[str], Awaitable[list[str]]]


async def resolve_host(host: str) -> list[str]:
    """The IPv4 and IPv6 addresses of host (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def worker_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class DnsWatcher:
    """Keeps the workers at NAME's addresses (on PORT) in the engine's set."""

    def __init__(
        self,
        name_port: str,
        engine: WorkerSetOwner,
        interval_s: float,
        drain_s: float,
        resolver: Resolver = resolve_host,
    ) -> None:
        check_address(name_port)
        self.name, _, port = name_port.rpartition(":")
        self.port = int(port)
        self.origin = f"dns:{name_port}"
        self._engine = engine
        self._interval_s = interval_s
        self._drain_s = drain_s
        self._resolve = resolver
        self._owned: set[str] = set()  # addresses this watcher added (and so may remove)
        self._busy: dict[str, asyncio.Task] = {}  # address -> its add or remove in progress

    async def run(self) -> None:
        """Until cancelled: resolve, follow, sleep."""
        try:
            while True:
                await self.sync_once()
                await asyncio.sleep(self._interval_s)
        finally:
            for task in self._busy.values():
                task.cancel()

    async def sync_once(self) -> None:
        """One resolution: adds and removals start (each in its own task: an unreachable
        worker delays no other)."""
        try:
            ips = await self._resolve(self.name)
        except OSError as exc:
            logger.warning("cannot resolve %s (the worker set stays as it is): %s", self.name, exc)
            return
        wanted = {worker_address(ip, self.port) for ip in ips}
        for address in sorted(wanted - self._owned - self._busy.keys()):
            self._start(address, self._add(address))
        for address in sorted(self._owned - wanted - self._busy.keys()):
            self._start(address, self._remove(address))

    def _start(self, address: str, work: Awaitable[None]) -> None:
        task = asyncio.create_task(work, name=f"{self.origin} {address}")
        self._busy[address] = task
        task.add_done_callback(lambda _: self._busy.pop(address, None))

    async def _add(self, address: str) -> None:
        try:
            if await self._engine.add_worker(address, self.origin):
                self._owned.add(address)
        except (WorkerStreamError, ValueError) as exc:  # retried at the next resolution
            logger.warning("%s: worker %s not added: %s", self.origin, address, exc)

    async def _remove(self, address: str) -> None:
        logger.info("%s no longer lists %s: removing it", self.origin, address)
        await self._engine.remove_worker(address, self._drain_s)
        self._owned.discard(address)

"""SIGTERM / SIGINT for the processes that run a scheduler (`yaie serve`, `yaie in-process`).

While the process starts, a signal raises SystemExit(128 + signal), so the caller's finally
blocks run (children stopped, files removed) instead of the process dying outright. While the
scheduler serves, its own handlers stop it (scheduler_service serve() hands these back after).
Once stopping has begun, a repeated signal (a supervisor may send SIGTERM twice) is logged and
ignored, so it cannot cut the stop short.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

logger = logging.getLogger("yaie.signals")
_stopping = threading.Event()


def install() -> None:
    """Handlers for SIGTERM and SIGINT in this (main) thread; not stopping yet."""
    _stopping.clear()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)


def stopping() -> None:
    """From now on a signal is only logged."""
    _stopping.set()


async def stopping_once(stop: asyncio.Event) -> None:
    """stopping() as soon as stop is set (while the scheduler's own handlers are still on)."""
    await stop.wait()
    _stopping.set()


def _on_signal(signum: int, frame: object) -> None:
    if _stopping.is_set():
        logger.warning("%s: already stopping", signal.Signals(signum).name)
        return
    raise SystemExit(128 + signum)

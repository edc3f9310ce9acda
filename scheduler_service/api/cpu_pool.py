"""CPU-heavy request work (tokenizing a long prompt, rendering a chat template, decoding many
ids) off the scheduler's event loop, in a thread pool sized to the machine.

Threads help because the Rust tokenizer releases the GIL in its batch calls (Tokenizer uses
them for large inputs), and Python work in a thread yields the GIL every switch interval
(5 ms), so the loop keeps streaming, answering health checks and stepping the workers. Small
jobs run inline: a hand-off to a thread costs more (~0.1-0.3 ms) than they do.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# Work on inputs up to this size (characters of text, or token ids) runs on the loop: a few
# milliseconds at most with a fast tokenizer.
INLINE_MAX_CHARS = 4096
INLINE_MAX_IDS = 16_384


def default_num_threads() -> int:
    """One fewer than the cores this process may use (the event loop keeps one), 1 to 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores - 1, 16))


class CpuPool:
    """Runs functions on a thread pool started at its first heavy job (threads idle then cost
    nothing; the interpreter joins them at exit)."""

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads or default_num_threads()
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, heavy: bool, fn: Callable[..., T], *args: object) -> T:
        """fn(*args): in a pool thread when heavy, else here (exceptions propagate)."""
        if not heavy:
            return fn(*args)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.num_threads, thread_name_prefix="yaie-cpu")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

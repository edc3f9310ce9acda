"""One thread for all of a CPU worker's torch work: the load, every step, every release.

torch's CPU ops run on OpenMP, and GNU OpenMP gives each thread that enters a parallel region a
thread team of its own. Once the teams hold more threads than there are cores, it stops spinning
between regions and every op pays a futex wake-up of its helpers. A worker that loaded its model
on the main thread and then ran its steps on a gRPC thread had two teams: on a 2-core machine its
forward got ~1 core (the process used 1.0 s of CPU a second; transformers' `generate`, 1.9) and a
batch-4 decode step took 100-120 ms where the forward alone takes ~80. One thread keeps one team.

On CUDA the calls run inline: the device does the work, and a hand-off would add latency to
each step's launch for nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import torch

T = TypeVar("T")


class ComputeThread:
    """call(fn, *args) runs fn on the one compute thread (inline when not threaded) and returns
    its result or raises its exception. The thread is a daemon: a process stopping by a signal
    during a load is not held up by it."""

    def __init__(self, threaded: bool) -> None:
        self._jobs: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, daemon=True, name="worker-compute")
            self._thread.start()

    @classmethod
    def for_device(cls, device: torch.device) -> ComputeThread:
        """Threaded for the CPU, inline for a GPU."""
        return cls(threaded=device.type == "cpu")

    def call(self, fn: Callable[..., T], *args) -> T:
        if self._jobs is None or threading.current_thread() is self._thread:
            return fn(*args)
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future.result()

    def _serve(self) -> None:
        assert self._jobs is not None
        while True:
            future, fn, args = self._jobs.get()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, which re-raises it
                future.set_exception(exc)

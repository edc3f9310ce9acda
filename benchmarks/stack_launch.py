"""The stack for bench_stack.py: `yaie worker` and `yaie scheduler` as child processes (the two
processes `yaie serve` runs), so that the scheduler can be restarted with other flags
(--no-prefix-cache, which `yaie serve` does not pass through) over the same loaded worker."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from yaie.cli.health_probe import wait_for_serving
from yaie.worker_service.python_child import module_command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen | None, timeout_s: float = 30.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Stack:
    """One worker (loaded once) and a scheduler in front of it (restartable)."""

    def __init__(self, model: Path, device: str, logs: Path, worker_args: list[str]) -> None:
        self.model, self.device, self.logs, self.worker_args = model, device, logs, worker_args
        self.worker: subprocess.Popen | None = None
        self.scheduler: subprocess.Popen | None = None
        self.target = ""
        self._worker_address = ""

    def _spawn(self, name: str, args: list[str], profile: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        if profile:  # cProfile runs the console script's main (no working dir on sys.path)
            command = module_command("cProfile", "-o", str(profile), "-m", "yaie.cli.main", *args)
        else:
            command = module_command("yaie.cli.main", *args)
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def start_worker(self, timeout_s: float) -> float:
        """Starts the worker and waits until its model is loaded; returns the seconds taken."""
        start = time.perf_counter()
        port = free_port()
        self._worker_address = f"127.0.0.1:{port}"
        self.worker = self._spawn(
            "worker",
            [
                "worker",
                "--model",
                str(self.model),
                "--port",
                str(port),
                "--device",
                self.device,
                "--log-level",
                "INFO",
                *self.worker_args,
            ],
        )
        self._wait(self._worker_address, self.worker, timeout_s)
        return time.perf_counter() - start

    def start_scheduler(
        self, name: str, extra: list[str], timeout_s: float = 120.0, profile: Path | None = None
    ) -> None:
        """(Re)starts the scheduler; with profile, under cProfile (written when it stops)."""
        _stop(self.scheduler)
        port = free_port()
        self.target = f"127.0.0.1:{port}"
        self.scheduler = self._spawn(
            name,
            [
                "scheduler",
                "--worker",
                self._worker_address,
                "--port",
                str(port),
                "--log-level",
                "WARNING",
                *extra,
            ],
            profile,
        )
        self._wait(self.target, self.scheduler, timeout_s)

    def _wait(self, address: str, process: subprocess.Popen, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{address}: the process exited with {process.returncode} "
                    f"(see the logs in {self.logs})"
                )
            try:
                wait_for_serving(address, 2.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def stop_scheduler(self) -> None:
        _stop(self.scheduler)
        self.scheduler = None

    def stop(self) -> None:
        _stop(self.scheduler)
        _stop(self.worker)
        self.scheduler = self.worker = None

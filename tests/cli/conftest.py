"""The `yaie` command lines of the CLI tests and real `yaie serve` stacks (a scheduler and worker
child processes) on 127.0.0.1, offered to test files through the `tools` fixture.

Each stack runs on a free port and is stopped (SIGTERM, then SIGKILL) by whoever started it;
tests that stop a stack themselves check that no child survives.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from tests import processes
from yaie.v1 import generation_pb2_grpc
from yaie.worker_service.python_child import module_command

START_TIMEOUT_S = 180.0


@dataclass
class Stack:
    target: str
    process: subprocess.Popen
    model: Path

    def stub(self, channel: grpc.Channel) -> generation_pb2_grpc.GenerationStub:
        return generation_pb2_grpc.GenerationStub(channel)


def yaie(*args: str) -> list[str]:
    """The `yaie` console script's command line (run through this interpreter)."""
    return module_command("yaie.cli.main", *args)


def serve_command(model: Path | str, port: int, num_blocks: int, *extra: str) -> list[str]:
    """`yaie serve` of model on port 127.0.0.1:port, on the CPU, with num_blocks KV blocks."""
    return yaie(
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--num-blocks",
        str(num_blocks),
        *extra,
    )


def run_yaie(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`yaie *args` run to its end (tests/processes.py's run_to_end)."""
    return processes.run_to_end(yaie(*args), env, timeout)


@contextmanager
def running_stack(model: Path, *extra: str) -> Iterator[Stack]:
    """`yaie serve --model model` on a free port, SERVING, stopped on exit. It asks clients for
    no API key ($YAIE_API_KEY is not passed on) unless extra names one."""
    port = processes.free_port()
    command = serve_command(model, port, 128, "--log-level", "WARNING", *extra)
    env = {k: v for k, v in os.environ.items() if k != "YAIE_API_KEY"}
    target = f"127.0.0.1:{port}"
    env["OMP_NUM_THREADS"] = "1"
    process = processes.start_serving(command, target, START_TIMEOUT_S, env)
    try:
        yield Stack(target, process, model)
    finally:
        processes.stop(process)


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """The helpers above and tests/processes.py's, for test files (which cannot import a
    conftest)."""
    helpers = (
        *(running_stack, yaie, serve_command, run_yaie),
        *(processes.free_port, processes.start_serving, processes.run_to_end, processes.stop),
        *(processes.child_pids, processes.descendants, processes.is_running),
        *(processes.wait_gone, processes.wait_for_children),
    )
    return SimpleNamespace(**{helper.__name__: helper for helper in helpers})

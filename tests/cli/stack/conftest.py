"""Real `yaie serve` stacks (a scheduler and worker child processes) on tiny random models.

Each stack runs on 127.0.0.1 with a free port and is stopped (SIGTERM, then SIGKILL) by the
fixture that started it; tests that stop a stack themselves check that no child survives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from yaie.cli.health_probe import wait_for_serving
from yaie.cli.models.random_model import write_random_model
from yaie.v1 import generation_pb2_grpc

ARCHITECTURES = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"]
START_TIMEOUT_S = 180.0


@dataclass
class Stack:
    target: str
    process: subprocess.Popen
    model: Path

    def stub(self, channel: grpc.Channel) -> generation_pb2_grpc.GenerationStub:
        return generation_pb2_grpc.GenerationStub(channel)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def yaie(*args: str) -> list[str]:
    """The `yaie` console script's command line (run through this interpreter)."""
    return [sys.executable, "-m", "yaie.cli.main", *args]


def child_pids(pid: int) -> list[int]:
    """Direct children of pid, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], timeout_s: float = 30.0) -> list[int]:
    """The pids still running after up to timeout_s (empty once all have exited)."""
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if is_running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@contextmanager
def running_stack(model: Path, *extra: str) -> Iterator[Stack]:
    """`yaie serve --model model` on a free port, SERVING, stopped on exit."""
    port = free_port()
    command = yaie(
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--num-blocks",
        "128",
        "--log-level",
        "WARNING",
        *extra,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        target = f"127.0.0.1:{port}"
        wait_for_serving(target, START_TIMEOUT_S)
        yield Stack(target, process, model)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """The helpers above, for test files (which cannot import this conftest)."""
    return SimpleNamespace(
        running_stack=running_stack,
        yaie=yaie,
        free_port=free_port,
        child_pids=child_pids,
        is_running=is_running,
        wait_gone=wait_gone,
        stop=stop,
    )


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: write_random_model(root / arch, arch, seed=1) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def llama_stack(model_dirs: dict[str, Path]) -> Iterator[Stack]:
    """One stack shared by the tests that need any running server.

    Its KV pool (96 blocks of 16 tokens) is smaller than the context (2048 tokens)."""
    with running_stack(model_dirs["LlamaForCausalLM"], "--num-blocks", "96") as stack:
        yield stack

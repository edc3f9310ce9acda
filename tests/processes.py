"""Child processes of the tests (stacks, workers, tensor-parallel groups) on 127.0.0.1: a free
port, start until SERVING or run to the end, stop (SIGTERM, then SIGKILL), and their children
read from /proc."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from yaie.cli.health_probe import wait_for_serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serving(
    command: list[str], target: str, timeout_s: float, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """command started (stdin closed) and SERVING on target within timeout_s, else stopped."""
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        wait_for_serving(target, timeout_s)
    except BaseException:
        stop(process)
        raise
    return process


def run_to_end(
    command: list[str], env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """command run to its end, stdin closed; stdout and stderr as str (decoded by hand:
    text=True would turn a written "\\r" into "\\n")."""
    result = subprocess.run(
        command, env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM (if still running), SIGKILL after timeout_s; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/pid/stat after the command name (state, ppid, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def child_pids(pid: int) -> list[int]:
    """Direct children of pid, from /proc."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [child for child in pids if (fields := _stat(child)) and int(fields[1]) == pid]


def descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendants of pid, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def wait_gone(pids: list[int], timeout_s: float = 30.0) -> list[int]:
    """The pids still running after up to timeout_s (empty once all have exited)."""
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if is_running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def wait_for_children(
    process: subprocess.Popen, timeout_s: float = 60.0, poll_s: float = 0.05
) -> list[int]:
    """process's children as soon as it has any ([] if it exits or timeout_s passes first)."""
    deadline = time.monotonic() + timeout_s
    while not (children := child_pids(process.pid)) and time.monotonic() < deadline:
        if process.poll() is not None:
            return []
        time.sleep(poll_s)
    return children

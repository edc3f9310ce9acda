"""`yaie scheduler --http-port` before any worker is ready: the HTTP API is up at once and says
503 with OpenAI's error body (health, models, generation), and a port in use fails the start."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import httpx

from yaie.worker_service.python_child import module_command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} never answered")


def _scheduler(http_port: int) -> subprocess.Popen:
    command = module_command("yaie.cli.main", "scheduler", "--worker")
    command += [f"127.0.0.1:{_free_port()}", "--port", str(_free_port())]
    command += ["--http-port", str(http_port), "--log-level", "WARNING"]
    return subprocess.Popen(command, env=dict(os.environ), stdin=subprocess.DEVNULL)


def test_http_api_answers_503_until_workers_are_ready():
    port = _free_port()
    process = _scheduler(port)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_listening(f"{url}/health", process)
        assert httpx.get(f"{url}/health").status_code == 503
        for reply in (
            httpx.get(f"{url}/v1/models"),
            httpx.post(f"{url}/v1/completions", json={"prompt": "hi"}),
        ):
            assert reply.status_code == 503
            assert reply.json()["error"]["type"] == "server_error"
        assert httpx.get(f"{url}/v1/nothing-here").status_code == 404
    finally:
        process.terminate()
        assert process.wait(30) in (0, 1)


def test_http_port_in_use_fails_the_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = _scheduler(taken.getsockname()[1])
        assert process.wait(60) == 1

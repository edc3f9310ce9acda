"""`yaie serve` never leaves a worker behind: not on SIGTERM, not after --demo, not on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def test_sigterm_stops_the_scheduler_and_every_worker(model_dirs, tools) -> None:
    with tools.running_stack(model_dirs["Qwen3ForCausalLM"], "--workers", "2") as stack:
        workers = tools.child_pids(stack.process.pid)
        assert len(workers) == 2
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(30) == 0
        assert tools.wait_gone(workers) == []


def test_repeated_sigterm_while_stopping_still_exits_cleanly(model_dirs, tools) -> None:
    """A supervisor may send SIGTERM again while the stack drains and stops its workers: each
    repeat is noted, none kills the process before its workers are stopped."""
    with tools.running_stack(model_dirs["Qwen3ForCausalLM"]) as stack:
        workers = tools.child_pids(stack.process.pid)
        deadline = time.monotonic() + 30
        while stack.process.poll() is None and time.monotonic() < deadline:
            stack.process.send_signal(signal.SIGTERM)
            time.sleep(0.01)
        assert stack.process.wait(5) == 0
        assert tools.wait_gone(workers) == []


def test_sigkill_of_serve_still_stops_its_workers(model_dirs, tools) -> None:
    """The kernel sends the workers SIGTERM when their parent dies (PR_SET_PDEATHSIG)."""
    command = tools.serve_command(model_dirs["MistralForCausalLM"], tools.free_port(), 64)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        workers = tools.wait_for_children(process)
        assert len(workers) == 1
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert tools.wait_gone(workers) == []
    finally:
        tools.stop(process)


def test_demo_streams_a_generation_and_exits_with_nothing_left(model_dirs, tools) -> None:
    demo = ("--demo", "The cook says", "--demo-tokens", "8")
    command = tools.serve_command(model_dirs["LlamaForCausalLM"], tools.free_port(), 64, *demo)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        workers = tools.wait_for_children(process)
        out, _ = process.communicate(timeout=180)
    finally:
        tools.stop(process)
    assert process.returncode == 0
    assert out.startswith("The cook says") and len(out) > len("The cook says")
    assert workers and tools.wait_gone(workers) == []


def test_sigterm_while_starting_stops_the_workers_and_removes_the_run_secret(
    model_dirs, tools, tmp_path
) -> None:
    """SIGTERM as soon as the first worker exists (before SERVING): the workers stop and the
    run's internal-secret file is gone."""
    command = tools.serve_command(model_dirs["LlamaForCausalLM"], tools.free_port(), 64)
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the run's secret file is written
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
    try:
        workers = tools.wait_for_children(process, poll_s=0.02)
        assert workers, "no worker was started"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) in (0, 128 + signal.SIGTERM)
        assert tools.wait_gone(workers) == []
        assert list(tmp_path.glob("yaie-internal-secret-*")) == []
    finally:
        tools.stop(process)


def test_workers_get_the_run_secret_by_descriptor_and_no_api_key(model_dirs, tools, tmp_path):
    """The run's secret reaches the workers through an inherited in-memory file: a SIGKILLed
    `yaie serve` leaves no secret file (and one an earlier run left is removed at start); the
    workers' environment holds no $YAIE_API_KEY (nor other variables a worker never reads)."""
    stale = tmp_path / "yaie-internal-secret-k3j_x9a2"  # the name an older version wrote
    stale.write_text("left by a killed run")
    port = tools.free_port()
    command = tools.serve_command(model_dirs["LlamaForCausalLM"], port, 64)
    env = {**os.environ, "TMPDIR": str(tmp_path), "YAIE_API_KEY": "sk-not-for-workers"}
    env["SOME_CALLER_TOKEN"] = "not-for-workers-either"
    process = tools.start_serving(command, f"127.0.0.1:{port}", 300, env)
    try:
        (worker,) = tools.child_pids(process.pid)
        environ = dict(
            entry.split("=", 1)
            for entry in open(f"/proc/{worker}/environ").read().split("\0")
            if "=" in entry
        )
        cmdline = open(f"/proc/{worker}/cmdline").read().split("\0")
        assert "YAIE_API_KEY" not in environ and "SOME_CALLER_TOKEN" not in environ
        assert environ["PATH"] == os.environ["PATH"]
        secret_path = cmdline[cmdline.index("--internal-secret-file") + 1]
        assert secret_path.startswith("/proc/self/fd/")
        assert list(tmp_path.iterdir()) == []  # SERVING: the workers took the secret
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert tools.wait_gone([worker]) == []
        assert list(tmp_path.iterdir()) == []
    finally:
        tools.stop(process)

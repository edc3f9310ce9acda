"""`yaie` dispatches its subcommands; a scheduler is NOT_SERVING until its workers are."""

from __future__ import annotations

import subprocess
import time

import grpc

from yaie.cli.health_probe import check
from yaie.cli.main import main


def test_yaie_lists_its_commands_and_refuses_unknown_ones(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("serve", "scheduler", "worker", "generate"))
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_scheduler_without_a_ready_worker_is_not_serving_then_gives_up(tools) -> None:
    port = tools.free_port()
    command = tools.yaie(
        "scheduler",
        "--worker",
        f"127.0.0.1:{tools.free_port()}",
        "--port",
        str(port),
        "--worker-wait",
        "4",
    )
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        statuses = set()
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                statuses.add(check(f"127.0.0.1:{port}", timeout_s=1.0))
            except grpc.RpcError:
                pass  # not listening yet, or already gone
            time.sleep(0.1)
        _, err = process.communicate(timeout=30)
    finally:
        tools.stop(process)
    assert statuses == {"NOT_SERVING"}
    assert process.returncode == 1 and "was not SERVING" in err

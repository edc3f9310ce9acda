"""`yaie serve --log-format json`: the scheduler's lines and its workers' share one stderr, and
every line of it is one JSON object (the workers are given the stack's format; the demo keeps
the scheduler quiet, the worker warns of its random weights)."""

from __future__ import annotations

import json
import subprocess


def test_every_stderr_line_of_a_json_logging_stack_is_json(model_dirs, tools):
    command = tools.yaie(
        "serve",
        "--model",
        str(model_dirs["LlamaForCausalLM"]),
        "--port",
        "0",
        "--device",
        "cpu",
        "--num-blocks",
        "64",
        "--log-format",
        "json",
        "--demo",
        "The cook says",
        "--demo-tokens",
        "4",
    )
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, check=False
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    loggers = {record["logger"] for record in records}
    assert any(name.startswith("yaie.worker_service") for name in loggers), loggers
    assert result.stdout.startswith("The cook says")  # the demo's text stays on stdout

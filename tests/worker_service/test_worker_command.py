"""`yaie worker` on its own: --revision of a hub --model (downloaded from HF_ENDPOINT, here a
stand-in on 127.0.0.1) and --log-format json (every stderr line one JSON object)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from tests.hub_stand_in import HubStandIn, Repo
from yaie.worker_service.python_child import module_command

REPO = "yaie-test/tiny-llama"


def _worker(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = module_command("yaie.worker_service", "--port", "0", "--device", "cpu")
    return subprocess.Popen(
        [*command, "--num-blocks", "16", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
    )


def test_revision_with_a_local_directory_is_refused(tiny_model_dir):
    process = _worker("--model", str(tiny_model_dir()), "--revision", "v1")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "--revision needs a hub --model" in stderr


def test_worker_serves_a_hub_model_at_its_revision_logging_json_lines(tiny_model_dir, tmp_path):
    main, v1 = tiny_model_dir(), tiny_model_dir("LlamaForCausalLM", seed=1)
    hub = HubStandIn({REPO: Repo({"main": main, "v1": v1})})
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home")}
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        env.pop(name, None)
    process = _worker("--model", REPO, "--revision", "v1", "--log-format", "json", env=env)
    lines: list[str] = []
    try:
        for line in process.stderr:  # until the worker says it serves (or exits)
            lines.append(line)
            if "worker SERVING" in line:
                break
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        hub.stop()
        if process.poll() is None:
            process.kill()
    lines += rest.splitlines()
    assert process.returncode == 0, "".join(lines)
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert {"time", "level", "logger", "message"} <= set(records[0])
    messages = [record["message"] for record in records]
    assert any("worker SERVING" in message for message in messages)
    snapshot = tmp_path / "hf-home/hub/models--yaie-test--tiny-llama/snapshots"
    commit = hub.repos[REPO].commits["v1"]
    assert any(f"loading {snapshot / commit}" in message for message in messages), messages

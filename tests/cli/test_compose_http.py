"""docker-compose.yml and the image serve the OpenAI-compatible HTTP API beside gRPC: the
scheduler listens on 0.0.0.0:8000 inside its container and the port is published."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_scheduler_serves_the_http_api_on_8000() -> None:
    scheduler = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["scheduler"]
    command = scheduler["command"]
    assert command[command.index("--http-port") + 1] == "8000"
    assert command[command.index("--http-host") + 1] == "0.0.0.0"
    assert any(str(port).endswith(":8000") for port in scheduler["ports"])
    assert "8000" in (ROOT / "Dockerfile").read_text().split("EXPOSE", 1)[1].splitlines()[0]

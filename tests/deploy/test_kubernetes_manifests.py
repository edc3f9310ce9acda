"""deploy/kubernetes/: every manifest is valid against the Kubernetes schemas (offline, the
schemas bundled with kubernetes-validate, strict: an unknown field fails), and the pieces fit
together: the flags parse with the real parsers, ports, probes, the secret, the join target,
the GPU request and the disruption budget agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yaie.cli.models.builtin_model import FOLDER
from yaie.scheduler_service import __main__ as scheduler_main
from yaie.scheduler_service.api.server import LIVENESS_SERVICE
from yaie.worker_service import __main__ as worker_main

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
# The oldest release we support (gRPC probes and policy/v1 are GA there) and the newest schema.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def _documents() -> dict[tuple[str, str], dict]:
    """(kind, name) -> resource, over every manifest the kustomization lists."""
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((ROOT / name).read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


DOCS = _documents()


def _container(deployment: str) -> dict:
    (container,) = DOCS[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
    return container


def _flags(container: dict) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in container["args"][1:])


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((ROOT / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(
        p.name for p in ROOT.glob("*.yaml") if p.name != "kustomization.yaml"
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("key", sorted(DOCS), ids=lambda key: f"{key[0]}/{key[1]}")
def test_each_resource_is_valid_for_kubernetes(key: tuple[str, str], version: str) -> None:
    kubernetes_validate.validate(DOCS[key], version, strict=True)


def test_the_validator_catches_a_misspelt_field_offline() -> None:
    """Strict validation against the bundled schemas: a typo is an error, not ignored."""
    broken = yaml.safe_load(yaml.safe_dump(DOCS[("Deployment", "yaie-worker")]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_containers_flags_parse_with_the_real_parsers() -> None:
    scheduler, worker = _container("yaie-scheduler"), _container("yaie-worker")
    assert scheduler["args"][0] == "scheduler" and worker["args"][0] == "worker"
    scheduler_main.build_parser().parse_args(scheduler["args"][1:])
    worker_args = [arg.replace("$(POD_IP)", "10.0.0.7") for arg in worker["args"][1:]]
    parsed = worker_main.build_parser().parse_args(worker_args)
    assert parsed.advertise_host == "10.0.0.7" and parsed.model == f"/models/{FOLDER}"
    assert [e["name"] for e in worker["env"]] == ["POD_IP"]


def test_services_ports_and_probes_line_up() -> None:
    scheduler, worker = _container("yaie-scheduler"), _container("yaie-worker")
    flags = _flags(scheduler)
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports == {
        "grpc": int(flags["port"]),
        "http": int(flags["http-port"]),
        "metrics": int(flags["metrics-port"]),
        "internal": int(flags["internal-port"]),
    }
    public = DOCS[("Service", "yaie-scheduler")]["spec"]
    assert {p["targetPort"] for p in public["ports"]} == {"grpc", "http", "metrics"}
    internal = DOCS[("Service", "yaie-scheduler-internal")]["spec"]
    assert [p["targetPort"] for p in internal["ports"]] == ["internal"]
    assert internal["publishNotReadyAddresses"]  # ready only after workers joined it
    port = internal["ports"][0]["port"]
    assert _flags(worker)["join"] == f"yaie-scheduler-internal:{port}"
    assert scheduler["readinessProbe"]["grpc"] == {"port": ports["grpc"]}
    assert scheduler["livenessProbe"]["grpc"] == {
        "port": ports["grpc"],
        "service": LIVENESS_SERVICE,
    }
    step = worker["ports"][0]["containerPort"]
    assert step == int(_flags(worker)["port"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["grpc"] == {"port": step}
    headless = DOCS[("Service", "yaie-worker-headless")]["spec"]
    assert headless["clusterIP"] == "None" and headless["ports"][0]["port"] == step


def test_the_secret_gpu_and_disruption_budget() -> None:
    for name in ("yaie-scheduler", "yaie-worker"):
        pod = DOCS[("Deployment", name)]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["internal-secret"]["secret"]["secretName"] == "yaie-internal-secret"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "internal-secret")
        secret_file = _flags(container)["internal-secret-file"]
        assert secret_file == f"{mount['mountPath']}/secret"
        assert "cpu" in container["resources"]["requests"]
    worker = _container("yaie-worker")["resources"]
    assert worker["requests"]["nvidia.com/gpu"] == worker["limits"]["nvidia.com/gpu"] == 1
    budget = DOCS[("PodDisruptionBudget", "yaie-worker")]["spec"]
    labels = DOCS[("Deployment", "yaie-worker")]["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert DOCS[("Deployment", "yaie-scheduler")]["spec"]["strategy"]["type"] == "Recreate"

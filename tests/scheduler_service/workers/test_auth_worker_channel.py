"""The scheduler's side of the internal channel: with channel_security configured (mTLS and the
shared secret), WorkerClient describes a real worker and runs a step on its stream; without the
secret or without a client certificate the worker is unusable (WorkerStreamError)."""

from __future__ import annotations

import asyncio

import pytest
import served_stack

from yaie.cli.models.random_model import write_random_model
from yaie.scheduler_service.engine.request import SamplingConfig
from yaie.scheduler_service.ops import channel_security
from yaie.scheduler_service.ops.channel_security import WorkerChannelSecurity
from yaie.scheduler_service.workers.step_plan import NewRequestSpec, PlanEntry, StepPlan
from yaie.scheduler_service.workers.worker_client import WorkerClient, WorkerStreamError

SECRET = b"internal-secret-42"


@pytest.fixture(scope="module")
def pki() -> served_stack.Pki:
    pytest.importorskip("cryptography")
    return served_stack.make_pki()


@pytest.fixture(scope="module")
def worker_address(pki, tmp_path_factory):
    """A real CPU worker requiring mTLS (client certificates from the test CA) and SECRET."""
    from yaie.worker_service.app import start_worker
    from yaie.worker_service.auth import WorkerSecurity
    from yaie.worker_service.config import WorkerConfig

    root = tmp_path_factory.mktemp("worker-pki")
    model = write_random_model(root / "model", "LlamaForCausalLM", seed=3)
    files = {"cert": pki.server_cert, "key": pki.server_key, "ca": pki.ca, "secret": SECRET}
    for name, data in files.items():
        (root / name).write_bytes(data)
    security = WorkerSecurity.from_files(
        str(root / "secret"), str(root / "cert"), str(root / "key"), str(root / "ca")
    )
    config = WorkerConfig(
        model=str(model), host="127.0.0.1", port=0, device="cpu", block_size=4, num_blocks=16
    )
    worker = start_worker(config, security)
    yield f"localhost:{worker.port}"
    worker.stop(grace=None)


async def _describe_and_step(address: str) -> list[int]:
    client = WorkerClient(address)
    try:
        info = await client.describe(timeout=10)
        assert info.num_blocks == 16
        client.open_stream()
        spec = NewRequestSpec([5, 6, 7], 3, 0, SamplingConfig(temperature=0.0, seed=1))
        entries = [PlanEntry(request_id=1, num_tokens=3, new_block_ids=[0], new_request=spec)]
        plan = StepPlan.of(1, entries)
        await client.send(plan)
        outcome = await client.receive(plan, timeout=30)
        assert not outcome.error
        return outcome.token_ids
    finally:
        await client.close()


def _run_with(security: WorkerChannelSecurity, address: str) -> list[int]:
    previous = channel_security.worker_security()
    channel_security.configure_workers(security)
    try:
        return asyncio.run(_describe_and_step(address))
    finally:
        channel_security.configure_workers(previous)


def test_mtls_and_the_secret_let_the_scheduler_run_steps(pki, worker_address) -> None:
    security = WorkerChannelSecurity(SECRET, pki.ca, pki.client_cert, pki.client_key)
    tokens = _run_with(security, worker_address)
    assert len(tokens) == 1 and tokens[0] >= 0


@pytest.mark.parametrize("missing", ["secret", "client certificate", "tls"])
def test_a_scheduler_missing_a_credential_cannot_use_the_worker(
    pki, worker_address, missing
) -> None:
    security = {
        "secret": WorkerChannelSecurity(b"wrong", pki.ca, pki.client_cert, pki.client_key),
        "client certificate": WorkerChannelSecurity(SECRET, pki.ca),
        "tls": WorkerChannelSecurity(SECRET),
    }[missing]
    with pytest.raises(WorkerStreamError):
        _run_with(security, worker_address)

"""The internal channel: a worker started with a secret refuses Describe and Step without it (or
with a wrong one) with UNAUTHENTICATED before any plan runs; health stays open; the right secret
works; the worker binds to loopback by default."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.worker_service.driver import sampling
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc
from yaie.worker_service.__main__ import build_parser
from yaie.worker_service.app import start_worker
from yaie.worker_service.auth import SECRET_METADATA_KEY, WorkerSecurity, is_loopback
from yaie.worker_service.config import WorkerConfig

SECRET = b"internal-0123456789abcdef"
PLAN = worker_pb2.StepPlan(
    step_id=1,
    new_requests=[
        worker_pb2.NewRequest(
            request_id=1, token_ids=[5, 6, 7], num_prompt_tokens=3, sampling=sampling()
        )
    ],
    run_request_ids=[1],
    run_num_tokens=[3],
    run_num_new_blocks=[1],
    new_block_ids=[0],
)


@pytest.fixture(scope="module")
def secured(tiny_model_dir):
    """(worker, channel, launches): launches counts plans the runner received."""
    config = WorkerConfig(
        model=str(tiny_model_dir("LlamaForCausalLM")),
        host="127.0.0.1",
        port=0,
        device="cpu",
        block_size=4,
        num_blocks=16,
    )
    worker = start_worker(config, WorkerSecurity(secret=SECRET))
    launches: list[int] = []
    runner = worker.servicer.runner
    launch = runner.launch
    runner.launch = lambda table, plan: launches.append(plan.step_id) or launch(table, plan)
    channel = grpc.insecure_channel(f"127.0.0.1:{worker.port}")
    yield worker, channel, launches
    channel.close()
    worker.stop(grace=None)


def _step(channel: grpc.Channel, metadata: tuple) -> list[worker_pb2.StepResult]:
    stub = worker_pb2_grpc.WorkerStub(channel)
    return list(stub.Step(iter([PLAN]), metadata=metadata, timeout=30))


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        ((SECRET_METADATA_KEY, "wrong"),),
        ((SECRET_METADATA_KEY, SECRET.decode()[:-1]),),
        (("authorization", f"Bearer {SECRET.decode()}"),),
        ((SECRET_METADATA_KEY, "wrong"), (SECRET_METADATA_KEY, SECRET.decode())),
    ],
    ids=["missing", "wrong", "prefix", "other-header", "two-values"],
)
def test_calls_without_the_secret_are_refused_before_any_plan_runs(secured, metadata) -> None:
    _, channel, launches = secured
    before = len(launches)
    stub = worker_pb2_grpc.WorkerStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.Describe(worker_pb2.DescribeRequest(), metadata=metadata, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as error:
        _step(channel, metadata)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(launches) == before  # the runner never saw the plan


def test_the_right_secret_describes_and_steps_and_health_is_open(secured) -> None:
    _, channel, launches = secured
    metadata = ((SECRET_METADATA_KEY, SECRET.decode()),)
    stub = worker_pb2_grpc.WorkerStub(channel)
    info = stub.Describe(worker_pb2.DescribeRequest(), metadata=metadata, timeout=10)
    assert info.num_blocks == 16
    results = _step(channel, metadata)
    assert len(results) == 1 and not results[0].error and results[0].token_ids[0] >= 0
    assert launches[-1] == 1
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_security_files_are_checked(tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(" s3cret\n")
    assert WorkerSecurity.from_files(str(secret), None, None, None).secret == b"s3cret"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for args in (
        (str(empty), None, None, None),
        (None, "cert.pem", None, None),
        (None, None, None, "ca.pem"),
        (str(tmp_path / "absent"), None, None, None),
    ):
        with pytest.raises(ValueError):
            WorkerSecurity.from_files(*args)


def test_worker_binds_to_loopback_by_default() -> None:
    args = build_parser().parse_args(["--model", "m"])
    assert args.host == "127.0.0.1" and is_loopback(args.host)
    assert not is_loopback("0.0.0.0")

"""A failed step stream or Describe says why: the status code always, and a placeholder where the
transport gave no details (a worker that died mid-call), never an empty reason."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from yaie.scheduler_service.workers.step_plan import StepPlan
from yaie.scheduler_service.workers.worker_client import WorkerClient, WorkerStreamError


class _FailedCall:
    """A Step call whose next read fails as a dead worker's does: UNAVAILABLE, no details."""

    async def read(self) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=""
        )

    def cancel(self) -> bool:
        return False


def test_a_failed_step_stream_names_its_status_when_details_are_empty() -> None:
    async def receive() -> str:
        client = WorkerClient("127.0.0.1:1")
        client._call = _FailedCall()
        with pytest.raises(WorkerStreamError) as failure:
            await client.receive(StepPlan(step_id=1), timeout=5.0)
        await client.close()
        return str(failure.value)

    message = asyncio.run(receive())
    assert message == "127.0.0.1:1: step stream failed: UNAVAILABLE: no details from the transport"

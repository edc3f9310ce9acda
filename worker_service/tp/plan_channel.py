"""The channel on which rank 0 of a tensor-parallel worker shares every change to a request table
with the other ranks: a header, then the plan as StepPlan bytes (wire.py) in a uint8 tensor, on
the group's gloo group (host memory, no device sync).
"""

from __future__ import annotations

from enum import IntEnum

import torch
import torch.distributed as dist

from yaie.worker_service.protocol import Plan
from yaie.worker_service.tp.collectives import TPGroup
from yaie.worker_service.wire import plan_from_bytes, plan_to_bytes


class PlanOp(IntEnum):
    """What rank 0 tells the other ranks; each op names one request table (one Step stream)."""

    LAUNCH = 1  # apply a plan to the table (a release-only plan when nothing runs)
    CLOSE = 2  # the stream closed: drop the table


def share_plan(group: TPGroup, op: PlanOp, table_id: int, plan: Plan | None = None) -> None:
    """Rank 0: broadcasts one message to the other ranks (they call receive_plan)."""
    assert group.rank == 0
    payload = plan_to_bytes(plan) if plan is not None else b""
    header = torch.tensor([int(op), table_id, len(payload)], dtype=torch.int64)
    dist.broadcast(header, 0, group=group.cpu_group)
    if payload:
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        dist.broadcast(data, 0, group=group.cpu_group)


def receive_plan(group: TPGroup) -> tuple[PlanOp, int, Plan | None]:
    """Ranks > 0: blocks until rank 0 shares the next message; (op, table id, plan)."""
    header = torch.empty(3, dtype=torch.int64)
    dist.broadcast(header, 0, group=group.cpu_group)
    op, table_id, num_bytes = header.tolist()
    plan = None
    if num_bytes:
        data = torch.empty(num_bytes, dtype=torch.uint8)
        dist.broadcast(data, 0, group=group.cpu_group)
        plan = plan_from_bytes(data.numpy().tobytes())
    return PlanOp(op), table_id, plan

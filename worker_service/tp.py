"""Tensor parallelism inside one worker: the process group of its ranks (NCCL on GPUs, gloo on
the CPU), the collectives the sharded model calls, and the channel on which rank 0 shares each
step plan with the other ranks (serialized yaie.worker.v1.StepPlan bytes in a uint8 tensor).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

import torch
import torch.distributed as dist

from yaie.worker.v1 import worker_pb2
from yaie.worker_service.config import WorkerConfig
from yaie.worker_service.plan import Plan

log = logging.getLogger(__name__)

PLAN_WAIT_TIMEOUT = timedelta(days=365)


class PlanOp(IntEnum):
    """What rank 0 tells the other ranks; each op names one request table (one Step stream)."""

    LAUNCH = 1  # apply a plan to the table (a release-only plan when nothing runs)
    CLOSE = 2  # the stream closed: drop the table


@dataclass
class TPGroup:
    """This process's place in its worker's tensor-parallel group of `size` ranks."""

    rank: int
    size: int
    device: torch.device
    # Plans travel on a gloo group (host memory, no device sync); None is the default group.
    cpu_group: dist.ProcessGroup | None = None

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """Sums x over the ranks, in place (the row-parallel layers' partial outputs)."""
        dist.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, n] of every rank -> [T, size * n], rank r's columns at [r * n, (r + 1) * n).
        Every rank receives the same bytes (a copy, no arithmetic)."""
        rows, cols = x.shape
        out = x.new_empty(self.size * rows, cols)  # rank r's rows at [r * T, (r + 1) * T)
        dist.all_gather_single(out, x.contiguous())
        return out.view(self.size, rows, cols).transpose(0, 1).reshape(rows, self.size * cols)

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())

    def share_plan(self, op: PlanOp, table_id: int, plan: Plan | None = None) -> None:
        """Rank 0: broadcasts one message to the other ranks (they call receive_plan)."""
        assert self.rank == 0
        payload = plan_to_bytes(plan) if plan is not None else b""
        header = torch.tensor([int(op), table_id, len(payload)], dtype=torch.int64)
        dist.broadcast(header, 0, group=self.cpu_group)
        if payload:
            data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            dist.broadcast(data, 0, group=self.cpu_group)

    def receive_plan(self) -> tuple[PlanOp, int, Plan | None]:
        """Ranks > 0: blocks until rank 0 shares the next message; (op, table id, plan)."""
        header = torch.empty(3, dtype=torch.int64)
        dist.broadcast(header, 0, group=self.cpu_group)
        op, table_id, num_bytes = header.tolist()
        plan = None
        if num_bytes:
            data = torch.empty(num_bytes, dtype=torch.uint8)
            dist.broadcast(data, 0, group=self.cpu_group)
            plan = plan_from_bytes(data.numpy().tobytes())
        return PlanOp(op), table_id, plan


def plan_to_bytes(plan: Plan) -> bytes:
    """The plan as the StepPlan message it came from (exact: every field round-trips)."""
    message = worker_pb2.StepPlan(
        step_id=plan.step_id,
        new_requests=[
            worker_pb2.NewRequest(
                request_id=spec.request_id,
                token_ids=spec.token_ids,
                num_prompt_tokens=spec.num_prompt_tokens,
                num_cached_tokens=spec.num_cached_tokens,
                sampling=worker_pb2.SamplingParams(**spec.sampling),
            )
            for spec in plan.new_requests
        ],
        run_request_ids=[e.request_id for e in plan.run],
        run_num_tokens=[e.num_tokens for e in plan.run],
        run_num_new_blocks=[len(e.new_block_ids) for e in plan.run],
        new_block_ids=[b for e in plan.run for b in e.new_block_ids],
        release_request_ids=plan.release_request_ids,
    )
    return message.SerializeToString()


def plan_from_bytes(data: bytes) -> Plan:
    # Imported here: server.py imports the runner, which imports this module.
    from yaie.worker_service.server import plan_from_proto

    return plan_from_proto(worker_pb2.StepPlan.FromString(data))


def join_group(config: WorkerConfig) -> TPGroup:
    """Joins the group that tp_group.start_ranks set up (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT in the environment). Rank r uses cuda:{base + r} on CUDA."""
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if size != config.tp:
        raise ValueError(f"WORLD_SIZE {size} differs from --tp {config.tp}")
    base = config.torch_device()
    if base.type == "cuda":
        index = (base.index or 0) + local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"--tp {size} needs {size} GPUs from cuda:{base.index or 0}, "
                f"{torch.cuda.device_count()} visible"
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=size, device_id=device)
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # the ranks share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
        dist.init_process_group("gloo", rank=rank, world_size=size)
    # Ranks > 0 wait for plans as long as the worker idles: no timeout (a dead rank is seen by
    # rank 0's watch of its children, by PR_SET_PDEATHSIG, and by gloo's closed sockets).
    cpu_group = dist.new_group(backend="gloo", timeout=PLAN_WAIT_TIMEOUT)
    log.info("tensor-parallel rank %d of %d on %s", rank, size, device)
    return TPGroup(rank, size, device, cpu_group)

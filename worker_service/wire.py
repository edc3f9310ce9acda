"""Every conversion between yaie.worker.v1 messages and the worker's objects: StepPlan -> Plan,
StepOutput -> StepResult (protocol.py), the loaded model and pool -> WorkerInfo, and a Plan as
the StepPlan bytes rank 0 shares with the other ranks of a tensor-parallel group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING

from yaie.kernels.sampling import SamplingConfig
from yaie.worker.v1 import worker_pb2
from yaie.worker_service.config import dtype_name
from yaie.worker_service.protocol import NewRequestSpec, Plan, RunEntry, StepOutput

if TYPE_CHECKING:
    import torch

    from yaie.worker_service.models import CausalLM
    from yaie.worker_service.step.kv_pool import KVPool


class BadPlan(ValueError):
    """A StepPlan that cannot run at all (a step-level error): nothing runs, its releases still
    apply and the requests it runs are dropped (drop_request_ids); its result fails all num_run
    entries."""

    def __init__(self, reason: str, message: worker_pb2.StepPlan) -> None:
        super().__init__(reason)
        self.step_id = message.step_id
        self.drop_request_ids = [*message.release_request_ids, *message.run_request_ids]
        self.num_run = len(message.run_request_ids)


def plan_from_proto(message: worker_pb2.StepPlan, last_step_id: int | None = None) -> Plan:
    """BadPlan when step_id does not increase past last_step_id (the stream's last plan) or the
    plan's packed arrays do not line up. A new request whose sampling parameters are invalid
    goes to Plan.rejected_requests instead: it fails alone."""
    if last_step_id is not None and message.step_id <= last_step_id:
        raise BadPlan(f"step_id {message.step_id} after {last_step_id}: not increasing", message)
    num_run = len(message.run_request_ids)
    if len(message.run_num_tokens) != num_run or len(message.run_num_new_blocks) != num_run:
        raise BadPlan(
            f"run_request_ids, run_num_tokens and run_num_new_blocks differ in length "
            f"({num_run}, {len(message.run_num_tokens)}, {len(message.run_num_new_blocks)})",
            message,
        )
    block_ids = list(message.new_block_ids)
    if sum(message.run_num_new_blocks) != len(block_ids):
        raise BadPlan(
            f"run_num_new_blocks sum to {sum(message.run_num_new_blocks)}, "
            f"new_block_ids holds {len(block_ids)}",
            message,
        )
    run, offset = [], 0
    # the packed fields as lists first: one C copy each, then a plain loop (per row per step)
    columns = (
        list(message.run_request_ids),
        list(message.run_num_tokens),
        list(message.run_num_new_blocks),
    )
    for request_id, num_tokens, num_new in zip(*columns, strict=True):
        run.append(RunEntry(request_id, num_tokens, block_ids[offset : offset + num_new]))
        offset += num_new
    new_requests, rejected = _new_requests_from_proto(message.new_requests)
    release = list(message.release_request_ids)
    return Plan(message.step_id, new_requests, run, release, rejected)


def _new_requests_from_proto(
    messages: Iterable[worker_pb2.NewRequest],
) -> tuple[list[NewRequestSpec], dict[int, str]]:
    """The specs whose sampling decodes, and why each other one does not (by request id)."""
    specs, rejected = [], {}
    for r in messages:
        try:
            sampling = SamplingConfig.from_message(r.sampling)
        except ValueError as exc:
            rejected.setdefault(r.request_id, str(exc))
            continue
        specs.append(
            NewRequestSpec(
                r.request_id, list(r.token_ids), r.num_prompt_tokens, r.num_cached_tokens, sampling
            )
        )
    return specs, rejected


def result_to_proto(output: StepOutput) -> worker_pb2.StepResult:
    """Field by field (StepOutput has StepResult's fields); request_errors as RequestErrors."""
    values = {f.name: getattr(output, f.name) for f in fields(output)}
    errors = [
        worker_pb2.RequestError(request_id=i, message=m)
        for i, m in values.pop("request_errors").items()
    ]
    return worker_pb2.StepResult(**values, request_errors=errors)


def worker_info(
    model_name: str,
    model: CausalLM,
    pool: KVPool,
    device: torch.device,
    random_weights: bool,
    attention_backend: str,
) -> worker_pb2.WorkerInfo:
    """What Describe reports of a loaded worker (the scheduler sizes its allocator by the pool)."""
    return worker_pb2.WorkerInfo(
        protocol_version=worker_pb2.PROTOCOL_VERSION_CURRENT,
        model=model_name,
        architecture=model.architecture,
        dtype=dtype_name(model.dtype),
        device=str(device),
        vocab_size=model.vocab_size,
        max_context=model.max_context,
        block_size=pool.block_size,
        num_blocks=pool.num_blocks,
        random_weights=random_weights,
        attention_backend=attention_backend,
        kv_cache_dtype=dtype_name(pool.dtype),
    )


def plan_to_bytes(plan: Plan) -> bytes:
    """The plan as StepPlan bytes for the other ranks of a group (plan_from_bytes reads them).

    Every field round-trips but rejected_requests: a rejected id travels as a release, with none
    of its NewRequests. The other ranks then drop a live request of that id and fail its run
    entries as unknown, as rank 0 does, so every rank runs the same batch.
    """
    rejected = plan.rejected_requests
    message = worker_pb2.StepPlan(
        step_id=plan.step_id,
        new_requests=[
            _new_request_to_proto(spec)
            for spec in plan.new_requests
            if spec.request_id not in rejected
        ],
        run_request_ids=[e.request_id for e in plan.run],
        run_num_tokens=[e.num_tokens for e in plan.run],
        run_num_new_blocks=[len(e.new_block_ids) for e in plan.run],
        new_block_ids=[b for e in plan.run for b in e.new_block_ids],
        release_request_ids=[*plan.release_request_ids, *rejected],
    )
    return message.SerializeToString()


def _new_request_to_proto(spec: NewRequestSpec) -> worker_pb2.NewRequest:
    """Field by field (NewRequestSpec has NewRequest's fields), sampling by its codec."""
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    values["sampling"] = worker_pb2.SamplingParams(**spec.sampling.message_fields())
    return worker_pb2.NewRequest(**values)


def plan_from_bytes(data: bytes) -> Plan:
    return plan_from_proto(worker_pb2.StepPlan.FromString(data))

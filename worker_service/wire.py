"""Every conversion between yaie.worker.v1 messages and the worker's dataclasses (protocol.py):
StepPlan -> Plan, StepOutput -> StepResult, WorkerDescription -> WorkerInfo, and a Plan as the
StepPlan bytes rank 0 shares with the other ranks of a tensor-parallel group.
"""

from __future__ import annotations

from dataclasses import asdict

from yaie.kernels.sampling import SamplingConfig
from yaie.worker.v1 import worker_pb2
from yaie.worker_service.protocol import (
    NewRequestSpec,
    Plan,
    RunEntry,
    StepOutput,
    WorkerDescription,
)


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
    for request_id, num_tokens, num_new in zip(
        message.run_request_ids, message.run_num_tokens, message.run_num_new_blocks, strict=True
    ):
        run.append(RunEntry(request_id, num_tokens, block_ids[offset : offset + num_new]))
        offset += num_new
    new_requests, rejected = [], {}
    for r in message.new_requests:
        try:
            sampling = SamplingConfig.from_message(r.sampling)
        except ValueError as exc:
            rejected.setdefault(r.request_id, str(exc))
            continue
        new_requests.append(
            NewRequestSpec(
                r.request_id, list(r.token_ids), r.num_prompt_tokens, r.num_cached_tokens, sampling
            )
        )
    release = list(message.release_request_ids)
    return Plan(message.step_id, new_requests, run, release, rejected)


def result_to_proto(output: StepOutput) -> worker_pb2.StepResult:
    return worker_pb2.StepResult(
        step_id=output.step_id,
        token_ids=output.token_ids,
        logprobs=output.logprobs,
        top_token_ids=output.top_token_ids,
        top_logprobs=output.top_logprobs,
        forward_ms=output.forward_ms,
        sample_ms=output.sample_ms,
        error=output.error,
        request_errors=[
            worker_pb2.RequestError(request_id=i, message=m)
            for i, m in output.request_errors.items()
        ],
    )


def info_to_proto(description: WorkerDescription) -> worker_pb2.WorkerInfo:
    return worker_pb2.WorkerInfo(
        protocol_version=worker_pb2.PROTOCOL_VERSION_CURRENT, **asdict(description)
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
            worker_pb2.NewRequest(
                request_id=spec.request_id,
                token_ids=spec.token_ids,
                num_prompt_tokens=spec.num_prompt_tokens,
                num_cached_tokens=spec.num_cached_tokens,
                sampling=worker_pb2.SamplingParams(**spec.sampling.message_fields()),
            )
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


def plan_from_bytes(data: bytes) -> Plan:
    return plan_from_proto(worker_pb2.StepPlan.FromString(data))

"""One worker connection: Describe, the long-lived Step stream, and plan/result conversion.

Protobuf stays in this file: the engine hands in StepPlans and gets StepOutcomes (step_plan.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import fields

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yaie.kernels.sampling.config import SamplingConfig
from yaie.scheduler_service.ops.channel_security import open_worker_channel
from yaie.scheduler_service.workers.step_plan import (
    StepOutcome,
    StepPlan,
    TokenLogprobs,
    WorkerDescription,
)
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc

# Step streams carry this process's id (worker.proto, Step): a worker refuses the streams of a
# second scheduler while the first one's are open, so two allocators never share one pool.
SCHEDULER_ID_METADATA_KEY = "yaie-scheduler-id"
SCHEDULER_ID = uuid.uuid4().hex


class WorkerStreamError(Exception):
    """The worker is unusable: the call failed, the stream ended, or a step timed out."""


class WorkerHungError(WorkerStreamError):
    """No answer in time: the worker process may still be alive (and resume later)."""


class WorkerProtocolError(WorkerStreamError):
    """The worker speaks another protocol version: retrying will not help."""


def describe_info(address: str, info: worker_pb2.WorkerInfo) -> WorkerDescription:
    """A worker's Describe answer as a WorkerDescription; refuses another protocol version."""
    if info.protocol_version != worker_pb2.PROTOCOL_VERSION_CURRENT:
        raise WorkerProtocolError(
            f"worker {address} speaks protocol {info.protocol_version}, "
            f"expected {worker_pb2.PROTOCOL_VERSION_CURRENT}"
        )
    names = [f.name for f in fields(WorkerDescription) if f.name != "address"]
    return WorkerDescription(address, **{name: getattr(info, name) for name in names})


def encode_plan(plan: StepPlan) -> worker_pb2.StepPlan:
    """The packed-diff StepPlan of the proto: the plan's columns are its packed arrays as they
    are (built in one constructor call: no per-entry Python work but the new requests')."""
    return worker_pb2.StepPlan(
        step_id=plan.step_id,
        release_request_ids=plan.release_ids,
        new_requests=[
            worker_pb2.NewRequest(
                request_id=request_id,
                token_ids=spec.token_ids,
                num_prompt_tokens=spec.num_prompt_tokens,
                num_cached_tokens=spec.num_cached_tokens,
                sampling=_encode_sampling(spec.sampling),
            )
            for request_id, spec in plan.new_requests
        ],
        run_request_ids=plan.request_ids,
        run_num_tokens=plan.num_tokens,
        run_num_new_blocks=plan.num_new_blocks,
        new_block_ids=plan.new_block_ids,
    )


def _encode_sampling(s: SamplingConfig) -> worker_pb2.SamplingParams:
    return worker_pb2.SamplingParams(**s.message_fields())


def decode_result(result: worker_pb2.StepResult, plan: StepPlan) -> StepOutcome:
    """Split the packed arrays back per entry of plan; logprobs come only for entries that
    asked and sampled, top alternatives n = that entry's top_logprobs each."""
    jumps = _decode_jumps(result)
    num_entries = plan.num_entries
    outcome = StepOutcome(
        step_id=result.step_id,
        token_ids=list(result.token_ids),
        logprobs=[None] * num_entries,
        error=result.error,
        request_errors={e.request_id: e.message for e in result.request_errors},
        forward_ms=result.forward_ms,
        sample_ms=result.sample_ms,
        grammar_done=frozenset(result.grammar_done_request_ids),
        jumps=jumps or {},
        grammar_ms=result.grammar_ms,
        launch_ms=result.launch_ms,
    )
    if result.error:
        return outcome
    if jumps is None:
        outcome.error = "the result's jump_* arrays do not line up"
        return outcome
    if len(outcome.token_ids) != num_entries:
        outcome.error = f"{len(outcome.token_ids)} token ids for {num_entries} run entries"
        return outcome
    num_lp = top_pos = 0
    for i, n in plan.top_logprobs.items():  # in entry order (inserted so)
        token = outcome.token_ids[i]
        if token < 0:
            continue
        top_ids = result.top_token_ids[top_pos : top_pos + n]
        top_lps = result.top_logprobs[top_pos : top_pos + n]
        if num_lp >= len(result.logprobs) or len(top_ids) != n or len(top_lps) != n:
            outcome.error = "the result's logprob arrays are shorter than the plan asks"
            return outcome
        top = list(zip(top_ids, top_lps, strict=True))
        outcome.logprobs[i] = TokenLogprobs(token, result.logprobs[num_lp], top)
        num_lp += 1
        top_pos += n
    return outcome


def _decode_jumps(result: worker_pb2.StepResult) -> dict[int, list[int]] | None:
    """The packed jump_* arrays as request id -> forced tokens; None when they do not line up."""
    ids, counts, tokens = result.jump_request_ids, result.jump_num_tokens, result.jump_token_ids
    if len(ids) != len(counts) or sum(counts) != len(tokens):
        return None
    jumps, start = {}, 0
    for request_id, n in zip(ids, counts, strict=True):
        jumps[request_id] = list(tokens[start : start + n])
        start += n
    return jumps


def _reason(error: grpc.aio.AioRpcError) -> str:
    """A failed call's status and details (a transport failure often has no details)."""
    return f"{error.code().name}: {error.details() or 'no details from the transport'}"


async def read_within(read: Awaitable, timeout: float, address: str) -> asyncio.Future:
    """Awaits read for up to timeout seconds; returns its finished future (WorkerHungError if
    none came). Not asyncio.wait_for: before Python 3.12 it can swallow a cancellation that
    arrives as the read completes, and the engine's stop() would then wait forever."""
    future = asyncio.ensure_future(read)
    try:
        done, _ = await asyncio.wait({future}, timeout=timeout)
    except asyncio.CancelledError:
        future.cancel()
        raise
    if not done:
        future.cancel()
        raise WorkerHungError(f"{address}: no step result in {timeout} s")
    return future


# The scheduler -> worker channel, each value chosen for this link:
CHANNEL_OPTIONS = [
    # A plan carries a new request's tokens (at most max_context ids, ~5 bytes each) and a result
    # carries top-n logprobs per entry: 256 MiB is far above either for any batch, and equal to
    # what the worker accepts, so a big batch never fails on a size limit on one side only.
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
    # Pings detect a dead TCP peer (a remote host gone without a RST). Every 30 s: workers
    # accept pings down to 20 s apart (worker_service/app.py); gRPC's default server policy would
    # answer faster pings with GOAWAY and break a healthy step stream. Hung workers are caught
    # sooner by the health checks and the step deadline (scheduler_service/config.py).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # A restarted worker is reconnected within ~2 s: gRPC's default backoff grows to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class WorkerClient:
    """A grpc.aio channel to one worker and its Step stream."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = open_worker_channel(address, CHANNEL_OPTIONS)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._call: grpc.aio.StreamStreamCall | None = None

    async def describe(self, timeout: float) -> WorkerDescription:
        """Describe the worker; refuses another protocol version."""
        try:
            info = await self._stub.Describe(worker_pb2.DescribeRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise WorkerStreamError(f"Describe of {self.address} failed: {_reason(exc)}") from exc
        return describe_info(self.address, info)

    def open_stream(self) -> None:
        """A new Step stream (request ids and step ids start afresh on it)."""
        self.abandon_stream()
        self._call = self._stub.Step(metadata=((SCHEDULER_ID_METADATA_KEY, SCHEDULER_ID),))

    def abandon_stream(self) -> None:
        """Cancels the Step stream (the worker drops its requests); a read or write in progress
        fails with WorkerStreamError. The channel stays for reconnecting."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def health(self, timeout: float) -> str:
        """grpc.health.v1's answer ("SERVING", "NOT_SERVING", ...) or the call's status code
        ("UNAVAILABLE": nothing listens; "DEADLINE_EXCEEDED": no answer, e.g. it hangs)."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def send(self, plan: StepPlan) -> None:
        if self._call is None:
            raise WorkerStreamError(f"{self.address}: the step stream was abandoned")
        try:
            await self._call.write(encode_plan(plan))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            step = plan.step_id
            raise WorkerStreamError(f"sending step {step} to {self.address}: {exc}") from exc

    async def receive(self, plan: StepPlan, timeout: float) -> StepOutcome:
        """The next StepResult, decoded against the entries of its plan."""
        if self._call is None:
            raise WorkerStreamError(f"{self.address}: the step stream was abandoned")
        read = await read_within(self._call.read(), timeout, self.address)
        try:
            result = read.result()
        except asyncio.CancelledError as exc:  # the call itself was cancelled, not this task
            raise WorkerStreamError(f"{self.address}: the step stream was cancelled") from exc
        except grpc.aio.AioRpcError as exc:
            raise WorkerStreamError(f"{self.address}: step stream failed: {_reason(exc)}") from exc
        if result is grpc.aio.EOF:
            raise WorkerStreamError(f"{self.address}: the worker closed the step stream")
        return decode_result(result, plan)

    async def close(self) -> None:
        self.abandon_stream()
        await self._channel.close()

"""Structured logs (`--log-format json|text`) and the per-request trace of Generate calls: one
line at start and one at finish with the request id, its tenant, token counts and durations,
and the same numbers into Metrics when the endpoint is on.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from yaie.scheduler_service.ops.auth import current_tenant
from yaie.scheduler_service.ops.metrics import Metrics
from yaie.v1 import generation_pb2 as pb

request_log = logging.getLogger("yaie.requests")
GenerateHandler = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[pb.GenerateResponse]]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Configures the root logger on stderr (replacing earlier handlers)."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# A client-supplied string (a request id, before validation refuses a bad one) is cut to this
# many characters in a log entry, and written as a quoted, escaped token unless it is plain.
MAX_LOGGED_CHARS = 128
_PLAIN = re.compile(r"[!#-\[\]-~]*")  # printable ASCII but space, `"` and `\`: written as is


def _clipped(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_LOGGED_CHARS:
        return f"{value[:MAX_LOGGED_CHARS]}...({len(value)} chars)"
    return value


def _token(value: Any) -> str:
    """value as one token of a text log line: a newline or space in it cannot make a field (or
    a line) of its own."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text)  # quoted; control and non-ASCII characters escaped


def _log(message: str, fields: dict[str, Any]) -> None:
    if not request_log.isEnabledFor(logging.INFO):
        return
    fields = {key: _clipped(value) for key, value in fields.items()}
    text = " ".join(f"{key}={_token(value)}" for key, value in fields.items())
    request_log.info("%s %s", message, text, extra={"fields": fields})


class _Trace:
    """Timing and usage of one Generate call, read from the frames it sends."""

    def __init__(self, request_id: str, tenant: str = "-") -> None:
        self.request_id = request_id
        self.tenant = tenant
        self.start = self.last = time.perf_counter()
        self.first: float | None = None
        self.itl: list[float] = []
        self.usages: dict[int, pb.Usage] = {}  # completion index -> its usage so far
        self.outcome = "cancelled"  # unless a last frame or a status code says otherwise

    def frame(self, frame: pb.GenerateResponse) -> None:
        now = time.perf_counter()
        if frame.token_ids:
            if self.first is None:  # tokens that came with the first one: no gap (a frame
                self.first = now  # merges events its reader had not taken yet, under load)
                self.itl += [0.0] * (len(frame.token_ids) - 1)
            else:  # a frame of k tokens: k gaps of (now - last) / k each
                gap = (now - self.last) / len(frame.token_ids)
                self.itl += [gap] * len(frame.token_ids)
            self.last = now
        self.usages[frame.index] = frame.usage
        if frame.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self.outcome = (
                pb.FinishReason.Name(frame.finish_reason).removeprefix("FINISH_REASON_").lower()
            )


async def _observed(
    frames: AsyncIterator[pb.GenerateResponse],
    trace: _Trace,
    metrics: Metrics | None,
    peer: str,
    outcome_of: Callable[[BaseException, str], str],
) -> AsyncIterator[pb.GenerateResponse]:
    """frames, traced: logs at start and finish, metrics, the outcome of an error."""
    _log("request start", {"request_id": trace.request_id, "tenant": trace.tenant, "peer": peer})
    try:
        async for frame in frames:
            trace.frame(frame)
            yield frame
    except BaseException as error:
        trace.outcome = outcome_of(error, trace.outcome)
        raise
    finally:
        _finish(trace, metrics)
        await frames.aclose()  # closed now, not at garbage collection: aborts the request


def observe_generate(metrics: Metrics | None) -> Callable[[GenerateHandler], GenerateHandler]:
    """Wraps the Generate handler: assigns a request id when the client gave none, logs the
    call's start and finish, and records outcome, tokens, TTFT and ITL into metrics."""

    def wrap(generate: GenerateHandler) -> GenerateHandler:
        async def traced(request: Any, context: grpc.aio.ServicerContext):
            if isinstance(request, pb.GenerateRequest) and not request.request_id:
                request.request_id = uuid.uuid4().hex
            trace = _Trace(getattr(request, "request_id", "") or "-", current_tenant().label)

            def outcome_of(error: BaseException, outcome: str) -> str:
                code = context.code()
                remaining = context.time_remaining()
                if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
                    return code.name.lower()
                if remaining is not None and remaining <= 0:  # gRPC ended it at its deadline
                    return "deadline_exceeded"
                return "error" if outcome == "cancelled" else outcome

            observed = _observed(
                generate(request, context), trace, metrics, context.peer(), outcome_of
            )
            try:  # an async generator itself, as grpc.aio wants one
                async for frame in observed:
                    yield frame
            finally:
                await observed.aclose()

        return traced

    return wrap


def observe_frames(
    metrics: Metrics | None, outcome_of: Callable[[BaseException, str], str]
) -> Callable[[AsyncIterator[pb.GenerateResponse], str, str], AsyncIterator[pb.GenerateResponse]]:
    """The same trace for another API's stream of frames: wrap(frames, request_id, peer,
    tenant); outcome_of(error, outcome so far) names an error (e.g. by the HTTP status it maps
    to)."""

    def wrap(
        frames: AsyncIterator[pb.GenerateResponse], request_id: str, peer: str, tenant: str
    ) -> AsyncIterator[pb.GenerateResponse]:
        return _observed(frames, _Trace(request_id, tenant), metrics, peer, outcome_of)

    return wrap


def _finish(trace: _Trace, metrics: Metrics | None) -> None:
    # Summed over the completions (GenerateRequest.n): each is a sequence over the prompt.
    usage, now = pb.Usage(), time.perf_counter()
    for part in trace.usages.values():
        usage.prompt_tokens += part.prompt_tokens
        usage.completion_tokens += part.completion_tokens
        usage.cached_tokens += part.cached_tokens
    ttft = None if trace.first is None else trace.first - trace.start
    fields = {
        "request_id": trace.request_id,
        "tenant": trace.tenant,
        "outcome": trace.outcome,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "ttft_ms": None if ttft is None else round(ttft * 1000, 2),
        "duration_ms": round((now - trace.start) * 1000, 2),
    }
    _log("request finish", fields)
    if metrics is None:
        return
    metrics.record_finished(
        trace.outcome,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        trace.tenant,
    )
    if ttft is not None:
        metrics.ttft.observe(ttft)
    for gap in trace.itl:
        metrics.itl.observe(gap)

"""A per-step timeline of each worker loop, for the benchmarks: with YAIE_STEP_TRACE=PATH set,
one JSON line per step result is appended to PATH (off by default, and then free).

Each line: step id; the plan (entries, tokens, prefill tokens, requests running and waiting);
the scheduler's own time for it (schedule_ms, send_ms: policy + plan encode and write;
process_ms: handling its result; gc_ms: of schedule + send, the time the process spent in
Python's garbage collector); when it was sent and when its result arrived (seconds on
the scheduler's monotonic clock); the worker's forward_ms / sample_ms (device time, from the
step's first mark: host work before its first kernel counts where the device was idle) and
launch_ms (its host time from taking the plan to the step queued).
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import IO

ENV = "YAIE_STEP_TRACE"


class StepTrace:
    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self.gc_s = 0.0  # seconds this process has spent collecting garbage since it opened
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        else:
            self.gc_s += now - self._gc_started

    @classmethod
    def from_env(cls) -> StepTrace | None:
        path = os.environ.get(ENV)
        return cls(path) if path else None

    def plan_fields(
        self,
        plan,
        prefill_tokens: int,
        running: int,
        waiting: int,
        start: float,
        scheduled: float,
        gc_start: float,
    ) -> dict:
        """A plan's fields, as it is sent (plan: its StepPlan; start / scheduled: when its step's
        scheduling began and ended; gc_start: gc_s at start); record() adds its result's."""
        sent = time.perf_counter()
        return dict(
            step=plan.step_id,
            entries=len(plan.num_tokens),
            tokens=sum(plan.num_tokens),
            prefill_tokens=prefill_tokens,
            running=running,
            waiting=waiting,
            schedule_ms=(scheduled - start) * 1e3,
            send_ms=(sent - scheduled) * 1e3,
            gc_ms=(self.gc_s - gc_start) * 1e3,
            t_sent=sent,
        )

    def record(self, **fields: float | int) -> None:
        self._file.write(json.dumps(fields, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._file.close()


def summarize(lines: list[dict]) -> dict[str, float]:
    """Phase totals of a trace: steps with prefill tokens vs decode-only steps (seconds)."""
    out: dict[str, float] = {}
    for phase, steps in (
        ("prefill", [s for s in lines if s["prefill_tokens"]]),
        ("decode", [s for s in lines if not s["prefill_tokens"]]),
    ):
        if not steps:
            continue
        n = len(steps)
        out[f"{phase}_steps"] = n
        out[f"{phase}_tokens_per_step"] = sum(s["tokens"] for s in steps) / n
        out[f"{phase}_forward_ms"] = sum(s["forward_ms"] for s in steps) / n
        out[f"{phase}_sample_ms"] = sum(s["sample_ms"] for s in steps) / n
        out[f"{phase}_launch_ms"] = sum(s.get("launch_ms", 0.0) for s in steps) / n
        out[f"{phase}_gc_ms"] = sum(s.get("gc_ms", 0.0) for s in steps) / n
        out[f"{phase}_scheduler_ms"] = (
            sum(s["schedule_ms"] + s["send_ms"] + s["process_ms"] for s in steps) / n
        )
    ordered = sorted(lines, key=lambda s: s["t_result"])
    gaps = [b["t_result"] - a["t_result"] for a, b in zip(ordered, ordered[1:], strict=False)]
    if gaps:
        out["step_period_ms_median"] = sorted(gaps)[len(gaps) // 2] * 1e3
    return out

"""YAIE_STEP_TRACE: one JSON line per step result, whose plan sizes add up to the work the
requests asked for; summarize() splits the trace into prefill and decode phases."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import pytest
from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.policy import BatchPolicy
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig
from yaie.scheduler_service.ops.step_trace import ENV, StepTrace, summarize


def test_the_trace_has_a_line_per_step_that_accounts_for_every_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "steps.jsonl"
    monkeypatch.setenv(ENV, str(trace))
    reqs = [
        GenerationRequest(f"t{i}", [1 + i, 2, 3, 4, 5, 6, 7], SamplingConfig(seed=i), 5)
        for i in range(3)
    ]

    async def main() -> None:
        config = SchedulerConfig(max_num_batched_tokens=8, prefill_chunk_size=4)
        async with engine_on_fake_workers(config, FakeWorkerConfig()) as (engine, _):
            await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))

    asyncio.run(main())
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [s["step"] for s in lines] == list(range(1, len(lines) + 1))
    # 3 prompts of 7 tokens, then 4 decodes each (the first token comes from the prefill)
    assert sum(s["prefill_tokens"] for s in lines) == 3 * 7
    assert sum(s["tokens"] - s["prefill_tokens"] for s in lines) >= 3 * 4
    assert all(s["tokens"] <= 8 and s["t_result"] >= s["t_sent"] for s in lines)
    assert all(s[k] >= 0 for s in lines for k in ("schedule_ms", "send_ms", "process_ms"))
    summary = summarize(lines)
    assert summary["prefill_steps"] + summary["decode_steps"] == len(lines)
    assert summary["prefill_tokens_per_step"] <= 8


def test_gc_ms_is_the_collectors_time_within_schedule_and_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collection during schedule() shows in that step's gc_ms; a trace that closes stops
    counting (its gc callback is gone)."""
    trace = tmp_path / "steps.jsonl"
    monkeypatch.setenv(ENV, str(trace))
    real = BatchPolicy.schedule
    calls = []

    def collecting(self, *args):
        calls.append(1)
        if len(calls) == 1:
            for _ in range(3):
                gc.collect()
        return real(self, *args)

    monkeypatch.setattr(BatchPolicy, "schedule", collecting)
    req = GenerationRequest("g", [1, 2, 3, 4, 5], SamplingConfig(seed=0), 3)

    async def main() -> None:
        async with engine_on_fake_workers(SchedulerConfig(), FakeWorkerConfig()) as (engine, _):
            await collect(engine.submit(req))

    asyncio.run(main())
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert lines[0]["gc_ms"] > 0 and lines[0]["gc_ms"] <= lines[0]["schedule_ms"]
    assert all(s["gc_ms"] >= 0 for s in lines)
    opened = StepTrace(str(tmp_path / "other.jsonl"))
    assert opened._on_gc in gc.callbacks
    opened.close()
    assert opened._on_gc not in gc.callbacks

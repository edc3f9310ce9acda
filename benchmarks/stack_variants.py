"""bench_stack.py --variants: the random workload again under other scheduler flags (each on a
fresh scheduler over the same loaded worker, so no prefix-cache hits carry over), every run with
a step timeline (scheduler_service/ops/step_trace.py) summarised per phase."""

from __future__ import annotations

import json
import os
from pathlib import Path

from yaie.scheduler_service.ops.step_trace import ENV, summarize


def parse(spec: str) -> list[tuple[str, list[str]]]:
    """Parses "name=--flag v --flag2 v2;name2=..." into [(name, args)]."""
    variants = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, _, args = part.partition("=")
        if not name.isidentifier():
            raise ValueError(f"variant name {name!r}: letters, digits and _ only")
        variants.append((name, args.split()))
    return variants


def start_traced(stack, name: str, args: list[str], out: Path, profile: Path | None = None) -> Path:
    """(Re)starts the scheduler with args, tracing its steps into out/trace_<name>.jsonl (and
    under cProfile into profile, when given)."""
    trace = out / f"trace_{name}.jsonl"
    trace.unlink(missing_ok=True)
    os.environ[ENV] = str(trace)
    try:
        stack.start_scheduler(f"scheduler_{name}", args, profile=profile)
    finally:
        del os.environ[ENV]
    return trace


def report(name: str, trace: Path, results: dict) -> None:
    """Prints and keeps the per-phase summary of a run's trace (after its workload)."""
    if not trace.exists():
        return
    lines = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    summary = summarize(lines)
    results[f"trace_{name}"] = summary
    print(f"step trace of {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))


def run(stack, runner, config, spec: str, out: Path, need_s: float, workload="random") -> None:
    """Each variant: a traced scheduler, the workload, the summary."""
    for name, args in parse(spec):
        trace = start_traced(stack, name, args, out)
        runner.workload(f"{workload}_{name}", stack.target, config, need_s)
        stack.stop_scheduler()  # the trace is complete once its process has exited
        report(name, trace, runner.results)

"""Structured output on the whole stack (GPU): output tok/s with a JSON-schema constraint vs none at
batch 1, 64 and 256, the grammar's host share of a step (the worker's grammar_ms in the step
trace), and jump-forward on vs off on a schema with long fixed keys. Random weights of a real
shape; the random tokenizer is byte-level, so XGrammar can build its vocabulary and every JSON
text is reachable. `python benchmarks/bench_structured.py` (GPU, Qwen3-0.6B shape),
`... --tiny` (tiny model on the CPU, tiny batches: checks the script end to end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import stack_launch
from stack_models import SHAPES, write_model

from yaie.cli import bench
from yaie.scheduler_service.ops.step_trace import ENV as TRACE_ENV


def workload_schema(output_len: int) -> dict:
    """A list of records that cannot close within output_len tokens (minItems output_len:
    an item is 21 characters at least, a token 13 at most), so every constrained request runs to
    max_new_tokens like a plain one. An open-ended list let the random model close it at once
    (30 of 64 requests done within 5 steps), which halved output tok/s with no mask cost.
    XGrammar compiles it in a few ms on a 4,096- and on a 151,936-id vocabulary."""
    record = {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
        "required": ["id", "name"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"items": {"type": "array", "items": record, "minItems": output_len}},
        "required": ["items"],
        "additionalProperties": False,
    }


# Long fixed keys, all required and in order: most of the output is forced text.
KEYS = [
    "the_customer_full_legal_name_as_registered",
    "the_customer_primary_billing_street_address",
    "the_customer_preferred_contact_email_address",
    "the_internal_account_manager_employee_number",
    "the_date_of_the_most_recent_successful_payment",
]
LONG_KEYS_SCHEMA = {
    "type": "object",
    "properties": {key: {"type": "string", "maxLength": 12} for key in KEYS},
    "required": KEYS,
    "additionalProperties": False,
}


def _config(batch: int, output_len: int, schema: dict | None, tiny: bool) -> bench.BenchConfig:
    """batch requests at once, each 128 prompt tokens (32 on --tiny) and up to output_len out."""
    return bench.BenchConfig(
        "fixed",
        num_prompts=batch,
        fixed_input_len=32 if tiny else 128,
        fixed_output_len=output_len,
        max_concurrency=batch,
        seed=0,
        disable_progress=True,
        json_schema=json.dumps(schema) if schema else None,
    )


class Bench:
    def __init__(
        self, stack: stack_launch.Stack, out: Path, budget_s: float, warm: bench.BenchConfig
    ) -> None:
        self.stack, self.out = stack, out
        self.warm = warm  # one constrained request run on each (re)started scheduler, untimed
        self.deadline = time.monotonic() + budget_s
        self.results: dict = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def scheduler(self, name: str, args: list[str]) -> Path:
        """(Re)starts the scheduler with args, its steps traced into out/trace_<name>.jsonl."""
        trace = self.out / f"trace_{name}.jsonl"
        trace.unlink(missing_ok=True)
        os.environ[TRACE_ENV] = str(trace)
        try:
            self.stack.start_scheduler(f"scheduler_{name}", args)
        finally:
            del os.environ[TRACE_ENV]
        # The first constrained request of a scheduler (and the worker's first compile of the
        # schema) pays one-time costs: kept out of every timed run.
        bench.run_workload(self.stack.target, self.warm, timeout_s=max(self.left(), 30.0))
        return trace

    def run(self, name: str, config: bench.BenchConfig, trace: Path) -> dict | None:
        """One workload; its metrics plus the trace's step times over the run's steps."""
        if self.left() < 10:
            print(f"[skip] {name}: budget spent")
            return None
        first = _num_lines(trace)
        metrics, _ = bench.run_workload(self.stack.target, config, timeout_s=self.left() - 5)
        steps = _read_trace(trace)[first:]
        row = {**metrics.to_dict(), **_step_times(steps, config.max_concurrency)}
        row["mean_output_len"] = row["total_output_tokens"] / max(row["completed"], 1)
        self.results[name] = row
        (self.out / "bench_structured.json").write_text(json.dumps(self.results, indent=1))
        print(
            f"{name}: {row['output_throughput']:.0f} output tok/s, "
            f"{row['request_throughput']:.2f} req/s, {row['completed']} done, "
            f"mean out {row['mean_output_len']:.0f} tok; step {row['step_ms']:.2f} ms, "
            f"grammar {row['grammar_ms']:.3f} ms/step, full batch {row['full_step_ms']:.2f} ms",
            flush=True,
        )
        return row


def _num_lines(trace: Path) -> int:
    return len(_read_trace(trace))


def _read_trace(trace: Path) -> list[dict]:
    if not trace.exists():
        return []
    return [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]


def _median_gap_ms(steps: list[dict]) -> float:
    """The median time between consecutive results of steps (ms)."""
    ordered = sorted(s["t_result"] for s in steps)
    gaps = sorted(b - a for a, b in zip(ordered, ordered[1:], strict=False)) or [0.0]
    return gaps[len(gaps) // 2] * 1e3


def _full_step_ms(steps: list[dict], batch: int) -> float:
    """The step period while the whole batch decodes (median gap to a result from the one
    before, both steps running all batch requests): plain vs constrained, the mask's true
    per-step cost, free of how many requests are still running."""
    ordered = sorted(steps, key=lambda s: s["t_result"])
    gaps = sorted(
        b["t_result"] - a["t_result"]
        for a, b in zip(ordered, ordered[1:], strict=False)
        if a["entries"] == b["entries"] == batch and not b["prefill_tokens"]
    )
    return gaps[len(gaps) // 2] * 1e3 if gaps else 0.0


def _step_times(steps: list[dict], batch: int) -> dict:
    """Mean worker times per decode step (no prefill tokens), the grammar's share of the step
    period (median gap between results), and the full-batch step period."""
    decode = [s for s in steps if not s["prefill_tokens"]] or steps
    if not decode:
        zero = ("step_ms", "grammar_ms", "forward_ms", "grammar_share", "full_step_ms")
        return dict.fromkeys(zero, 0.0)
    n = len(decode)
    period_ms = _median_gap_ms(decode)
    grammar_ms = sum(s.get("grammar_ms", 0.0) for s in decode) / n
    return {
        "step_ms": period_ms,
        "forward_ms": sum(s["forward_ms"] for s in decode) / n,
        "sample_ms": sum(s["sample_ms"] for s in decode) / n,
        "grammar_ms": grammar_ms,
        "grammar_share": grammar_ms / period_ms if period_ms else 0.0,
        "full_step_ms": _full_step_ms(steps, batch),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU, tiny batches")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting work after")
    p.add_argument("--batches", default=None, help="comma-separated (default 1,64,256)")
    p.add_argument("--output-len", type=int, default=None, help="max new tokens (default 256)")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    tiny = args.tiny
    device, shape = ("cpu", "tiny") if tiny else ("cuda", args.shape)
    batches = [int(b) for b in (args.batches or ("1,4" if tiny else "1,64,256")).split(",")]
    output_len = args.output_len or (24 if tiny else 256)
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_structured_"))
    out.mkdir(parents=True, exist_ok=True)
    model = write_model(shape, Path(tempfile.mkdtemp(prefix="bench_model_")), device)
    stack = stack_launch.Stack(model, device, out, ["--num-blocks", "512"] if tiny else [])
    schema = workload_schema(output_len)
    runner = Bench(stack, out, args.budget_s, _config(1, 8, schema, tiny))
    rows = []
    try:
        print(f"worker ready in {stack.start_worker(min(400.0, runner.left())):.1f} s", flush=True)
        trace = runner.scheduler("jump_forward", ["--jump-forward"])
        runner.run("warmup", _config(4, 16, schema, tiny), trace)
        plain, jumped = {}, {}
        for batch in batches:
            plain[batch] = runner.run(
                f"plain_b{batch}", _config(batch, output_len, None, tiny), trace
            )
            json_cfg = _config(batch, output_len, schema, tiny)
            jumped[batch] = runner.run(f"json_jf_b{batch}", json_cfg, trace)
        jf_batch = batches[min(1, len(batches) - 1)]
        keys = _config(jf_batch, output_len * 2, LONG_KEYS_SCHEMA, tiny)
        keys_jumped = runner.run(f"keys_jf_b{jf_batch}", keys, trace)
        # The mask alone: the same constrained runs with jump-forward off.
        trace_off = runner.scheduler("default", [])
        for batch in batches:
            json_cfg = _config(batch, output_len, schema, tiny)
            masked = runner.run(f"json_b{batch}", json_cfg, trace_off)
            if plain[batch] and masked:
                rows.append(_compare_row(f"batch {batch}", plain[batch], masked, jumped[batch]))
        decoded = runner.run(f"keys_nojf_b{jf_batch}", keys, trace_off)
        if keys_jumped and decoded:
            rows.append(_jump_row(f"long keys, batch {jf_batch}", decoded, keys_jumped))
    finally:
        stack.stop()
    print(f"\nshape {shape} on {device}; results in {out}")
    for row in rows:
        print(row)
    return 0


def _compare_row(name: str, plain: dict, masked: dict, jumped: dict | None) -> str:
    """The mask's cost (constrained, jump-forward off, vs plain), and the jump-forward run's."""
    cost = 1 - masked["output_throughput"] / max(plain["output_throughput"], 1e-9)
    m = masked
    row = (
        f"{name}: plain {plain['output_throughput']:.0f} tok/s, json {m['output_throughput']:.0f}"
        f" tok/s (cost {cost:+.1%}; goal <= 10% at 64); grammar {m['grammar_ms']:.3f} ms"
        f" of a {m['step_ms']:.2f} ms step ({m['grammar_share']:.1%}); full-batch step"
        f" {plain['full_step_ms']:.2f} ms plain, {m['full_step_ms']:.2f} ms json"
        f" ({m['full_step_ms'] - plain['full_step_ms']:+.2f} ms: the mask's cost per step)"
    )
    if jumped:
        row += f"; with jump-forward {jumped['output_throughput']:.0f} tok/s"
    return row


def _jump_row(name: str, decoded: dict, jumped: dict) -> str:
    speedup = jumped["request_throughput"] / max(decoded["request_throughput"], 1e-9)
    return (
        f"{name}: jump-forward off {decoded['request_throughput']:.2f} req/s "
        f"(E2E {decoded['mean_e2e_latency_ms']:.0f} ms), on {jumped['request_throughput']:.2f} "
        f"req/s (E2E {jumped['mean_e2e_latency_ms']:.0f} ms): {speedup:.2f}x"
    )


if __name__ == "__main__":
    sys.exit(main())

"""bench_stack.py --parallel-sampling: n = 8 completions of each of 64 prompts (one request per
prompt, GenerateRequest.n) against the same 512 completions asked as single requests (each
prompt 8 times), on the same worker, each on a fresh scheduler (no cache carried over) with a
step trace: output tok/s of both, their ratio, and the prefill tokens each computed. The single
requests of one prompt arrive together, so the prefix cache (and the policy's wait for a prompt
being computed) lets them share the prompt too: the difference is what one request with n
saves over n requests (streams, admissions, the tail recomputed per completion either way)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import stack_variants

from yaie.cli import bench
from yaie.cli.bench import datasets as ds

# nano-vllm's lengths (in and out uniform in [100, 1024]), temperature 1: the completions differ
PARALLEL = bench.BenchConfig(
    "random", 64, 1024, 1024, ds.NANO_VLLM_RANGE_RATIO, temperature=1.0, seed=0, n=8
)
PARALLEL_TINY = replace(PARALLEL, num_prompts=4, random_input_len=64, random_output_len=16, n=4)


def run(stack, runner, config: bench.BenchConfig, out: Path, need_s: float) -> None:
    """Both workloads twice, alternating (a fresh scheduler's first run is slow: the second
    round is the one compared), each traced; then one line comparing them."""
    singles = replace(config, n=1, repeat_prompts=config.n)
    for round_ in (1, 2):
        for kind, cfg in (("n", config), ("singles", singles)):
            name = f"parallel_{kind}_{round_}"
            trace = stack_variants.start_traced(stack, name, [], out)
            runner.workload(name, stack.target, cfg, need_s)
            stack.stop_scheduler()  # the trace is complete once its process has exited
            stack_variants.report(name, trace, runner.results)
            if trace.exists() and name in runner.results:
                lines = [json.loads(line) for line in trace.read_text().splitlines() if line]
                runner.results[name]["prefill_tokens"] = sum(s["prefill_tokens"] for s in lines)
    if "parallel_n_2" in runner.results and "parallel_singles_2" in runner.results:
        n, one = runner.results["parallel_n_2"], runner.results["parallel_singles_2"]
        ratio = n["output_throughput"] / max(one["output_throughput"], 1e-9)
        runner.results["parallel_ratio"] = ratio
        print(
            f"parallel sampling, {config.num_prompts} prompts x {config.n}: n={config.n} "
            f"{n['output_throughput']:,.0f} output tok/s ({n.get('prefill_tokens', '?')} prefill "
            f"tokens) vs {config.num_prompts * config.n} single requests "
            f"{one['output_throughput']:,.0f} ({one.get('prefill_tokens', '?')}): {ratio:.2f}x",
            flush=True,
        )
        runner.save()

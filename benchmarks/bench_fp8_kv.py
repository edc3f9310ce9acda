"""The fp8 KV cache on a GPU (issue 18), in stages, one table at the end:
  kernels  - fp8 store / decode / extend / grouped kernels vs the torch reference on fresh inputs;
             decode time of an fp8 pool next to bf16 (bandwidth in fp8 bytes over the copy),
             per fp8 math mode and for the first pass alone; extend time per math mode.
  accuracy - Qwen3-0.6B and Llama-3.1-8B shapes (random weights): per-step greedy agreement of an
             fp8 pool against a bf16 pool and the logit errors (kv_agreement.py), and for Qwen3
             worker_agreement.py's count against transformers fp32 with each pool.
  random   - the stack, Llama-3.1-8B shape, 500 prompts U[1, 4096] / U[1, 2048] (the throughput
             issue's), once per KV dtype on one written model.
  long     - the stack, 64 prompts of 16k in / 1k out: the pool decides how many run at once.
`source benchmarks/device_env.sh && python3 benchmarks/bench_fp8_kv.py --stages kernels,accuracy`
(writes $OUT/bench_fp8_kv.json). --quick shrinks the stack workloads to fit one call with the rest;
--tiny runs accuracy and the stack stages on the CPU with a tiny model (checks the script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

QUIET = dict(disable_progress=True, seed=0)
STAGES = ("kernels", "accuracy", "random", "long")
KV_DTYPES = ("bf16", "fp8_e4m3")


def workloads(size: str) -> dict:
    """size: full (the issue's), quick (fits one call with the other stages) or tiny (CPU)."""
    from yaie.cli import bench

    random = bench.BenchConfig("random", 500, 4096, 2048, 0.0, **QUIET)
    long = bench.BenchConfig("fixed", 64, fixed_input_len=16384, fixed_output_len=1024, **QUIET)
    warmup = bench.BenchConfig("random", 64, 1024, 16, 0.05, **QUIET)
    if size == "quick":
        random, long = replace(random, num_prompts=200), replace(long, num_prompts=32)
    if size == "tiny":
        random = replace(random, num_prompts=8, random_input_len=64, random_output_len=16)
        long = replace(long, num_prompts=4, fixed_input_len=256, fixed_output_len=16)
        warmup = replace(warmup, num_prompts=2, random_input_len=16, random_output_len=4)
    return {"random": random, "long": long, "warmup": warmup}


def model_dir(shape: str, cache: Path, device: str) -> Path:
    """The shape's random model under cache, written once (a warm machine keeps it)."""
    from stack_models import write_model

    done = cache / shape / "config.json"
    if done.exists():
        return done.parent
    return write_model(shape, cache, device)


def stage_kernels(results: dict) -> None:
    import fp8_kv_kernels as fk
    from bench_stack import ceilings

    copy_bw, _ = ceilings("cuda")
    results["copy_bytes_s"] = copy_bw
    print(f"copy {copy_bw / 1e12:.2f} TB/s (read + write)", flush=True)
    results["kernel_checks"] = fk.checks()
    results["decode"] = fk.timings(copy_bw)
    results["extend"] = fk.extend_timings()


def stage_accuracy(results: dict, cache: Path, steps: int, tiny: bool) -> None:
    import kv_agreement as ka
    from worker_agreement import Blocks, agreement, bf16_ulp

    from yaie.worker_service.loader import load_model
    from yaie.worker_service.step.kv_pool import KVPool
    from yaie.worker_service.step.runner import ModelRunner

    lengths = [1, 7, 16, 17, 100, 255, 256, 513]
    device = torch.device("cpu" if tiny else "cuda")
    for shape in ("tiny",) if tiny else ("qwen3-0.6b", "llama-3.1-8b"):
        path = model_dir(shape, cache, device.type)
        model = load_model(str(path), device, torch.bfloat16, "auto")
        prompts = ka.random_prompts(model.vocab_size, lengths)
        _, probe = ka.decode(model, torch.bfloat16, prompts[:2], 1)
        tau = 2 * bf16_ulp(probe.max(-1).values.abs().median().item())  # 2 bf16 ulps of top-1
        found = ka.measure(model, prompts, steps, "bf16", ["fp8_e4m3"], tau)["fp8_e4m3"]
        found["tau"] = tau
        results[f"accuracy {shape}"] = found
        print(f"{shape}: fp8 vs bf16 pool, {len(prompts)} x {steps} steps: {found}", flush=True)
        if shape in ("qwen3-0.6b", "tiny"):
            for kv in KV_DTYPES:
                dtype = ka.kv_dtype_of(kv, model.dtype)
                num_blocks = 8 * -(-(513 + 2 * steps) // 16) + 16
                pool = KVPool(model.num_layers, model.num_kv_heads, model.head_dim, dtype,
                              device, 16, num_blocks)  # fmt: skip
                runner = ModelRunner(model, pool, not tiny, max_graph_batch_size=8)
                rows, hf_tau, total = agreement(
                    runner, Blocks(16, num_blocks), path, runner.device, steps, model.vocab_size
                )
                results[f"worker_agreement {shape} {kv}"] = {"rows": rows, "tau": hf_tau,
                                                              "total": total}  # fmt: skip
                del runner, pool
        del model
        if not tiny:
            torch.cuda.empty_cache()


def watch_running(target: str, stop: threading.Event, peak: list[int]) -> None:
    """Samples GetServerStats.running until stop: the most requests the scheduler ran at once."""
    import grpc

    from yaie.v1 import generation_pb2 as pb
    from yaie.v1 import generation_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        while not stop.wait(0.2):
            try:
                stats = stub.GetServerStats(pb.GetServerStatsRequest(), timeout=2)
            except grpc.RpcError:
                continue
            peak[0] = max(peak[0], stats.running)


def stage_stack(results: dict, cache: Path, names: list[str], size: str, out: Path, deadline):
    """Per KV dtype: one worker over the Llama-3.1-8B shape, a scheduler, each workload."""
    import stack_launch
    from bench_stack import kv_capacity

    from yaie.cli import bench

    configs = workloads(size)
    device = "cpu" if size == "tiny" else "cuda"
    model = model_dir("tiny" if size == "tiny" else "llama-3.1-8b", cache, device)
    for kv in KV_DTYPES:
        worker_args = ["--kv-cache-dtype", kv] + (["--num-blocks", "512"] if size == "tiny" else [])
        if device == "cuda":
            torch.cuda.empty_cache()  # the worker sizes its pool from the free memory
        stack = stack_launch.Stack(model, device, out, worker_args)
        try:
            ready = stack.start_worker(400.0)
            stack.start_scheduler(f"scheduler_{kv}", [])
            info = asyncio.run(bench.model_info(stack.target))
            tokens = kv_capacity(stack.target) * info.block_size
            print(f"{kv}: worker ready in {ready:.0f} s, KV {info.kv_cache_dtype}, pool {tokens} "
                  "tokens", flush=True)  # fmt: skip
            bench.run_workload(stack.target, configs["warmup"], timeout_s=120)
            for name in names:
                left = deadline - time.monotonic()
                if left < 60:
                    print(f"[skip] {name} {kv}: {left:.0f} s left")
                    continue
                stop, peak = threading.Event(), [0]
                watcher = threading.Thread(target=watch_running, args=(stack.target, stop, peak))
                watcher.start()
                metrics, _ = bench.run_workload(stack.target, configs[name], timeout_s=left - 30)
                stop.set()
                watcher.join()
                results[f"{name} {kv}"] = {**metrics.to_dict(), "pool_tokens": tokens,
                                           "peak_running": peak[0]}  # fmt: skip
                print(f"{name} {kv}: {metrics.output_throughput:.0f} output tok/s, peak running "
                      f"{peak[0]}, {metrics.completed} done", flush=True)  # fmt: skip
        finally:
            stack.stop()


def summary(results: dict) -> str:
    lines = ["| figure | bf16 KV | fp8 KV | fp8 / bf16 |", "| --- | --- | --- | --- |"]
    for name in ("random", "long"):
        a, b = results.get(f"{name} bf16"), results.get(f"{name} fp8_e4m3")
        if a and b:
            lines.append(
                f"| {name}: output tok/s | {a['output_throughput']:.0f} | "
                f"{b['output_throughput']:.0f} | "
                f"{b['output_throughput'] / max(a['output_throughput'], 1e-9):.2f}x |"
            )
            lines.append(
                f"| {name}: pool tokens / peak running | {a['pool_tokens']} / "
                f"{a['peak_running']} | {b['pool_tokens']} / {b['peak_running']} | |"
            )
            lines.append(f"| {name}: median TTFT / TPOT ms | {a['median_ttft_ms']:.0f} / "
                         f"{a['median_tpot_ms']:.1f} | {b['median_ttft_ms']:.0f} / "
                         f"{b['median_tpot_ms']:.1f} | |")  # fmt: skip
    for key in [k for k in results if k.startswith("accuracy ")]:
        r, shape = results[key], key.removeprefix("accuracy ")
        if r:
            lines.append(
                f"| {shape}: fp8 vs bf16 pool, per-step agreement | | {r['agreed']}/"
                f"{r['steps']} (ties {r['ties']}, mismatches {r['mismatches']}) | |"
            )
            lines.append(f"| {shape}: logit error q50 / q99 / max (logit std {r['logit_std']:.2f}) "
                         f"| | {r['logit_err_q50']:.3f} / {r['logit_err_q99']:.3f} / "
                         f"{r['logit_err_max']:.3f} | |")  # fmt: skip
    for shape in sorted({k.split()[1] for k in results if k.startswith("worker_agreement ")}):
        cells = []
        for kv in KV_DTYPES:
            r = results.get(f"worker_agreement {shape} {kv}")
            agreed, ties, bad = r["rows"]["runner"] if r else (0, 0, 0)
            cells.append(f"{agreed}/{r['total']}, ties {ties}, mismatches {bad}" if r else "")
        lines.append(f"| {shape}: runner vs transformers fp32 (worker_agreement) | {cells[0]} | "
                     f"{cells[1]} | |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default="kernels,accuracy", help=f"comma list of {STAGES}")
    p.add_argument("--quick", action="store_true", help="random 200 and long 32 prompts")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny model and workloads")
    p.add_argument("--budget-s", type=float, default=520.0, help="stack workloads stop here")
    p.add_argument("--steps", type=int, default=64, help="greedy steps compared per prompt")
    p.add_argument(
        "--model-cache", default="build/bench_fp8_models", help="written models (kept: ignored)"
    )
    p.add_argument("--out-dir", default=os.environ.get("OUT") or None)
    args = p.parse_args()
    deadline = time.monotonic() + args.budget_s
    stages = [s for s in args.stages.split(",") if s]
    if unknown := set(stages) - set(STAGES):
        p.error(f"unknown stages {sorted(unknown)}")
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_fp8_"))
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.model_cache)
    if args.tiny and "kernels" in stages:
        p.error("the kernel stage needs a GPU")
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    device_name = "cpu" if args.tiny else torch.cuda.get_device_name()
    results: dict = {"device": device_name, "stages": stages, "size": size}
    started = time.monotonic()
    try:
        if "kernels" in stages:
            stage_kernels(results)
        if "accuracy" in stages:
            stage_accuracy(results, cache, args.steps, args.tiny)
        stack = [s for s in ("random", "long") if s in stages]
        if stack:
            stage_stack(results, cache, stack, size, out, deadline)
    finally:
        (out / "bench_fp8_kv.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"\n{results['device']}, stages {stages}, {time.monotonic() - started:.0f} s")
        if "decode" in results:
            import fp8_kv_kernels as fk

            print(fk.table(results["decode"]))
        print(summary(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

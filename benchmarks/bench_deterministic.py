"""What deterministic (batch-invariant) mode costs, and whether it holds, on this machine: the
engine over an in-process worker, plain and with --deterministic.

- throughput: N random requests (input and output lengths uniform in the ranges below) at once;
  output tok/s and wall seconds per mode;
- exactness: one seeded request's logprobs (and top-3) alone, then among 1 / 16 / 63 random
  requests with chunked prefill, then after a request that caches its prefix: bit-identical or
  not, per mode (plain is expected to differ somewhere, deterministic nowhere).

CPU: `python benchmarks/bench_deterministic.py` (a tiny random Llama, fp32).
GPU: `python benchmarks/bench_deterministic.py --shape qwen3-0.6b` (random weights of that
shape, bf16, Triton kernels, CUDA graphs). The nano-vllm workload's cost through the whole
gRPC stack: benchmarks/bench_stack.py with and without --worker-args="--deterministic".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from yaie.scheduler_service.config import SchedulerConfig  # noqa: E402
from yaie.scheduler_service.engine.engine import Engine  # noqa: E402
from yaie.scheduler_service.engine.request import (  # noqa: E402
    GenerationRequest,
    SamplingConfig,
)


def _random_requests(n: int, vocab: int, lengths: tuple[int, int, int, int], seed: int):
    rng = random.Random(seed)
    lo_in, hi_in, lo_out, hi_out = lengths
    return [
        GenerationRequest(
            f"b{seed}-{i}",
            [rng.randrange(vocab) for _ in range(rng.randint(lo_in, hi_in))],
            SamplingConfig(temperature=1.0, seed=i),
            rng.randint(lo_out, hi_out),
        )
        for i in range(n)
    ]


async def _drain(engine: Engine, reqs: list[GenerationRequest]) -> list[list]:
    """Submits every request at once; returns each one's logprob records."""

    async def one(req: GenerationRequest) -> list:
        records = []
        async for event in engine.submit(req):
            records += [(lp.token_id, lp.logprob, tuple(lp.top)) for lp in event.logprobs]
        return records

    return await asyncio.gather(*(one(r) for r in reqs))


async def _target_records(port: int, scenario: str, num_others: int, chunk: int) -> list:
    config = SchedulerConfig(prefill_chunk_size=chunk, max_num_batched_tokens=max(chunk, 16))
    engine = Engine([f"127.0.0.1:{port}"], config)
    await engine.start()
    try:
        vocab = engine.model_info.vocab_size
        prompt = [(j * 17 + 3) % vocab for j in range(61)]
        sampling = SamplingConfig(temperature=0.9, seed=11, top_logprobs=3, return_logprobs=True)
        target = GenerationRequest("target", prompt, sampling, 12)
        if scenario == "cached":
            warm = GenerationRequest("warm", prompt[:48] + [1, 2], SamplingConfig(seed=1), 2)
            await _drain(engine, [warm])
        others = _random_requests(num_others, vocab, (3, 80, 1, 16), seed=num_others)
        half = num_others // 2
        results = await _drain(engine, [*others[:half], target, *others[half:]])
        return results[half]
    finally:
        await engine.stop()


async def _throughput(port: int, n: int, lengths: tuple[int, int, int, int]) -> dict:
    engine = Engine([f"127.0.0.1:{port}"], SchedulerConfig())
    await engine.start()
    try:
        reqs = _random_requests(n, engine.model_info.vocab_size, lengths, seed=0)
        started = time.perf_counter()
        await _drain(engine, reqs)
        seconds = time.perf_counter() - started
        out = sum(r.max_new_tokens for r in reqs)
        return {"seconds": round(seconds, 2), "output_tok_s": round(out / seconds, 1)}
    finally:
        await engine.stop()


def measure(model: Path, device: str, deterministic: bool, args: argparse.Namespace) -> dict:
    from yaie.worker_service.app import start_worker
    from yaie.worker_service.config import WorkerConfig

    config = WorkerConfig(model=str(model), port=0, device=device, deterministic=deterministic)
    worker = start_worker(config)
    lengths = (args.min_input, args.max_input, args.min_output, args.max_output)

    async def run() -> dict:
        report = await _throughput(worker.port, args.num_prompts, lengths)
        alone = await _target_records(worker.port, "alone", 0, 2048)
        same = {}
        for name, scenario, others, chunk in [
            ("1 other", "batch", 1, 2048),
            ("16 others, chunks of 7", "batch", 16, 7),
            ("63 others, chunks of 32", "batch", 63, 32),
            ("cached prefix, chunks of 5", "cached", 0, 5),
        ]:
            found = await _target_records(worker.port, scenario, others, chunk)
            same[name] = found == alone
        report["bit_identical_to_alone"] = same
        return report

    try:
        return asyncio.run(run())
    finally:
        worker.stop(grace=None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default=None, help="a real model shape on CUDA (e.g. qwen3-0.6b)")
    p.add_argument("--num-prompts", type=int, default=None, help="default: 32 CPU, 256 GPU")
    p.add_argument("--min-input", type=int, default=None)
    p.add_argument("--max-input", type=int, default=None)
    p.add_argument("--min-output", type=int, default=None)
    p.add_argument("--max-output", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    gpu = args.shape is not None
    defaults = (256, 100, 1024, 100, 1024) if gpu else (32, 16, 128, 16, 64)  # nano-vllm on GPU
    names = ("num_prompts", "min_input", "max_input", "min_output", "max_output")
    for name, value in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    root = Path(tempfile.mkdtemp(prefix="bench_det_"))
    if gpu:
        from stack_models import write_model

        model, device = write_model(args.shape, root, "cuda"), "cuda"
    else:
        from yaie.cli.models.random_model import write_random_model

        model, device = write_random_model(root / "tiny", "LlamaForCausalLM", seed=0), "cpu"
    report = {
        mode: measure(model, device, mode == "deterministic", args)
        for mode in ("plain", "deterministic")
    }
    plain, det = report["plain"]["output_tok_s"], report["deterministic"]["output_tok_s"]
    report["deterministic_over_plain"] = round(det / plain, 3)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

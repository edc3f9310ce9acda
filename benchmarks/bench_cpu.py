"""Mini-YAIE against transformers' own `generate` on the CPU: the same model folder, the same
chat prompts (token ids), greedy, fixed output length, batches 1..N; runs interleaved, medians.

    python benchmarks/bench_cpu.py [--model DIR | --random-shape smollm2-135m] [--batches 1,4,8]
        [--tokens 48] [--reps 3] [--worker-threads N] [--scheduler-nice N]

With no --model it uses the built-in model (SmolLM2-135M-Instruct, converted on first use);
--random-shape writes random weights of a stack_models shape instead (where the real file
cannot travel, as to the lent GPU machine); --worker-threads sets the server's torch threads.
Output tok/s = batch * tokens / wall time of the whole batch (yaie: first request sent to last
frame; transformers: one `generate` call on the left-padded batch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from yaie.cli.health_probe import wait_for_serving
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc
from yaie.worker_service.python_child import module_command

sys.path.insert(0, str(Path(__file__).parent))
from stack_launch import free_port  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Why is the sky blue? Answer in one sentence.",
    "Write a haiku about the sea.",
    "What is two plus two?",
    "Give me a name for a pet cat.",
    "What language is spoken in Brazil?",
    "List the days of the week.",
]


def prompt_ids(tokenizer, batch: int) -> list[list[int]]:
    chats = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(batch)]
    texts = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats
    ]
    return [tokenizer(text, add_special_tokens=False).input_ids for text in texts]


def yaie_batch(stub, prompts: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
    def one(ids: list[int]) -> list[int]:
        request = pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=ids),
            sampling=pb.SamplingParams(temperature=0.0),
            stopping=pb.StoppingCriteria(max_new_tokens=tokens, min_new_tokens=tokens),
        )
        return [t for frame in stub.Generate(request, timeout=600) for t in frame.token_ids]

    start = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        outputs = list(pool.map(one, prompts))
    return time.perf_counter() - start, outputs


def hf_batch(model, tokenizer, prompts: list[list[int]], tokens: int):
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    return time.perf_counter() - start, out[:, width:].tolist()


def _agree(ours: list[int], theirs: list[int], eos: int) -> bool:
    """Equal up to our first EOS: past it the engines differ by contract (transformers'
    min_new_tokens bans EOS; ours, as documented in the proto, only ignores it as a stop)."""
    end = ours.index(eos) if eos in ours else len(ours)
    return ours[:end] == theirs[:end]


def start_server(model: str, port: int, threads: int | None, extra: list[str]) -> subprocess.Popen:
    command = module_command(
        "yaie.cli.main",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "WARNING",
        *extra,
    )
    env = dict(os.environ)
    if threads is not None:  # torch's intra-op threads in the scheduler and worker processes
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF folder (default: the built-in model)")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--random-shape", default=None, help="a stack_models shape, random weights")
    parser.add_argument("--worker-threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--serve-args", default="", help='more `yaie serve` flags: "--no-overlap"')
    parser.add_argument(
        "--scheduler-nice",
        type=int,
        default=0,
        help="renice the scheduler's threads (the `yaie serve` process, not its workers) by N",
    )
    args = parser.parse_args()
    if args.random_shape is not None:
        from stack_models import write_model

        args.model = str(write_model(args.random_shape, Path(tempfile.mkdtemp()), "cpu"))
    elif args.model is None:
        from yaie.cli.models.builtin_model import ensure_builtin_model

        args.model = str(ensure_builtin_model())
    batches = [int(b) for b in args.batches.split(",")]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    port = free_port()
    server = start_server(args.model, port, args.worker_threads, args.serve_args.split())
    try:
        wait_for_serving(f"127.0.0.1:{port}", timeout_s=300)
        if args.scheduler_nice:  # Linux niceness is per thread: every thread of the process
            for tid in os.listdir(f"/proc/{server.pid}/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), args.scheduler_nice)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = generation_pb2_grpc.GenerationStub(channel)
        yaie_batch(stub, prompt_ids(tokenizer, 1), 4)  # warm-up both engines
        hf_batch(model, tokenizer, prompt_ids(tokenizer, 1), 4)
        times: dict[tuple[str, int], list[float]] = {}
        same: dict[int, int] = {}
        for _ in range(args.reps):
            for batch in batches:
                prompts = prompt_ids(tokenizer, batch)
                t_yaie, ours = yaie_batch(stub, prompts, args.tokens)
                t_hf, theirs = hf_batch(model, tokenizer, prompts, args.tokens)
                times.setdefault(("yaie", batch), []).append(t_yaie)
                times.setdefault(("hf", batch), []).append(t_hf)
                same[batch] = sum(
                    _agree(a, b, tokenizer.eos_token_id) for a, b in zip(ours, theirs, strict=True)
                )
        channel.close()
    finally:
        server.terminate()
        server.wait(60)
    print(
        f"\nmodel {args.model}, {args.tokens} greedy tokens per request, "
        f"{torch.get_num_threads()} torch threads (server: {args.worker_threads or 'default'}), "
        f"scheduler nice {args.scheduler_nice}, serve flags {args.serve_args or 'none'}, "
        f"median of {args.reps}"
    )
    print("| batch | yaie tok/s | transformers tok/s | ratio | outputs equal (to the first EOS) |")
    print("| --- | --- | --- | --- | --- |")
    for batch in batches:
        ours = batch * args.tokens / statistics.median(times[("yaie", batch)])
        theirs = batch * args.tokens / statistics.median(times[("hf", batch)])
        print(
            f"| {batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} | {same[batch]}/{batch} |"
        )


if __name__ == "__main__":
    main()

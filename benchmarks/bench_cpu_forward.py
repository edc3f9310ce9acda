"""One decode step of the model alone on the CPU, ours against transformers' on the same folder
(no scheduler, no gRPC, no sampling): separates the forward's cost from the stack's.

    python benchmarks/bench_cpu_forward.py [--model DIR | --random-shape smollm2-135m]
        [--batches 1,4,8] [--context 80] [--reps 7]

Ours: a decode ForwardBatch over a paged pool filled by a real prefill, with the oneDNN-packed
linear layers a CPU worker serves with (and, in its own column, with aten's matmul as loaded);
transformers: one token over its DynamicCache (cropped back after each step). Interleaved,
median ms per step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.loader import load_model

sys.path.insert(0, str(Path(__file__).parent))
BLOCK = 16


def ours_batch(batch: int, context: int, new: int) -> ForwardBatch:
    """batch requests of context tokens, the last `new` of each run now (1: a decode step)."""
    tables = torch.arange(batch * -(-context // BLOCK), dtype=torch.int32).view(batch, -1)
    slots = (tables.long()[:, :, None] * BLOCK + torch.arange(BLOCK)).view(batch, -1)
    return ForwardBatch(
        input_ids=torch.randint(0, 1000, (batch * new,)),
        positions=torch.arange(context - new, context).repeat(batch),
        slots=slots[:, context - new : context].flatten(),
        block_tables=tables,
        seq_lens=torch.full((batch,), context, dtype=torch.int32),
        query_start=torch.arange(batch + 1, dtype=torch.int32) * new,
        max_query_len=new,
        is_decode=new == 1,
        logits_indices=torch.arange(1, batch + 1) * new - 1,
    )


def ragged_decode(batch: int, context: int) -> ForwardBatch:
    """A decode step whose rows hold context/2 .. context tokens (as a stack's rows do): the
    padded, masked batch path of decode attention."""
    lens = [context - (context // 2) * b // max(batch - 1, 1) for b in range(batch)]
    tables = torch.arange(batch * -(-context // BLOCK), dtype=torch.int32).view(batch, -1)
    last = torch.tensor(lens) - 1
    return ForwardBatch(
        input_ids=torch.randint(0, 1000, (batch,)),
        positions=last,
        slots=tables.long()[torch.arange(batch), last // BLOCK] * BLOCK + last % BLOCK,
        block_tables=tables,
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        query_start=torch.arange(batch + 1, dtype=torch.int32),
        max_query_len=1,
        is_decode=True,
        logits_indices=torch.arange(batch),
    )


def median_ms(fn, reps: int, inner: int = 3) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) * 1e3 / inner)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--random-shape", default=None)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--context", type=int, default=80)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if args.random_shape is not None:
        from stack_models import write_model

        args.model = str(write_model(args.random_shape, Path(tempfile.mkdtemp()), "cpu"))
    elif args.model is None:
        from yaie.cli.models.builtin_model import ensure_builtin_model

        args.model = str(ensure_builtin_model())
    ours = load_model(args.model, "cpu", torch.float32, progress=False)
    aten = load_model(args.model, "cpu", torch.float32, progress=False)
    ours.pack_cpu_linears()  # as build_runner does on the CPU
    theirs = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    print(f"model {args.model}, context {args.context}, {torch.get_num_threads()} torch threads")
    print(
        "| batch | ours ms/step | transformers ms/step | ratio | ours, ragged rows "
        "| ours, aten matmul |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for batch in [int(b) for b in args.batches.split(",")]:
        ms_a, ms_b, ms_r, ms_t = compare(ours, aten, theirs, batch, args.context, args.reps)
        print(
            f"| {batch} | {ms_a:.1f} | {ms_b:.1f} | {ms_b / ms_a:.2f} | {ms_r:.1f} | {ms_t:.1f} |"
        )


@torch.inference_mode()
def compare(ours, aten, theirs, batch: int, context: int, reps: int) -> tuple[float, ...]:
    """Median ms of one decode step at batch x context: ours, transformers', ours with rows of
    unequal lengths, and ours over aten's matmul."""
    shape = (ours.num_layers, 2, batch * -(-context // BLOCK) + 1, BLOCK)
    pool = torch.zeros((*shape, ours.num_kv_heads, ours.head_dim))
    ours(ours_batch(batch, context, context), pool)  # the prompts' K/V
    step, ragged = ours_batch(batch, context, 1), ragged_decode(batch, context)
    cache = theirs(torch.randint(0, 1000, (batch, context)), use_cache=True).past_key_values

    def theirs_step() -> None:
        token = torch.randint(0, 1000, (batch, 1))
        theirs(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)

    a, b, r, t = [], [], [], []
    for _ in range(reps):  # interleaved
        a += median_ms(lambda: ours(step, pool), 1)
        b += median_ms(theirs_step, 1)
        r += median_ms(lambda: ours(ragged, pool), 1)
        t += median_ms(lambda: aten(step, pool), 1)
    return tuple(statistics.median(x) for x in (a, b, r, t))


if __name__ == "__main__":
    main()

"""The grammar's host work per step on the CPU (no GPU): matchers catching up on their sampled
token, next-token bitmasks filled and gathered, at batch 64 and 256, on the tiny model's
tokenizer and on a 151,936-id byte-level vocabulary (the Qwen3 shape's). `python
benchmarks/bench_grammar_host.py` (the mask's application, a device kernel, is left out)."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import xgrammar as xgr
from bench_structured import workload_schema
from stack_models import cover_vocab

from yaie.cli.models.random_model import write_tokenizer
from yaie.kernels.sampling import SamplingConfig
from yaie.worker_service.step import grammar_step
from yaie.worker_service.step.batch_builder import ScheduledEntry
from yaie.worker_service.step.grammar import GrammarBackend, StepTokens


def _tokenizer_dir(root: Path, vocab_size: int) -> Path:
    """The benchmark models' tokenizer (write_random_model's, every id given a text)."""
    path = root / f"tokenizer_{vocab_size}"
    write_tokenizer(path)
    cover_vocab(path, vocab_size)
    return path


def _allowed(bitmask: torch.Tensor) -> np.ndarray:
    """The ids a bitmask row [words] int32 admits."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")
    return np.flatnonzero(bits)


def time_steps(
    backend: GrammarBackend, batch: int, num_steps: int, jump_forward: bool, seed: int
) -> list[float]:
    """ms of host grammar work per step for batch constrained decodes, each sampling a random
    token its mask admits (a random model's output, as on the GPU benchmark)."""
    rng = random.Random(seed)
    sampling = SamplingConfig(
        grammar_kind="json_schema",
        grammar=json.dumps(workload_schema(num_steps)),
        jump_forward=jump_forward,
    )
    grammars = [backend.new_grammar(sampling, []) for _ in range(batch)]
    masks = grammar_step.GrammarMasks(backend.vocab_size)
    entries = [
        ScheduledEntry(i, SimpleNamespace(grammar=g), 0, 1, True, True)  # type: ignore[arg-type]
        for i, g in enumerate(grammars)
    ]
    logits = torch.zeros(batch, backend.vocab_size)
    times = []
    for _ in range(num_steps):
        started = time.perf_counter()
        sampled, _ = grammar_step.advance_grammars(entries)
        bitmask = masks.apply(logits, sampled)
        times.append((time.perf_counter() - started) * 1e3)
        tokens = [rng.choice(_allowed(bitmask[i])) for i in range(batch)]
        step_tokens = StepTokens(torch.tensor(tokens, dtype=torch.int32), batch, None)
        for i, g in enumerate(grammars):
            g.expect(step_tokens, i)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="64,256")
    p.add_argument("--vocabs", default="4096,151936")
    p.add_argument("--steps", type=int, default=64)
    args = p.parse_args()
    xgr.apply_token_bitmask_inplace = lambda *a, **k: None  # a device kernel on the GPU
    root = Path(tempfile.mkdtemp(prefix="bench_grammar_host_"))
    for vocab_size in [int(v) for v in args.vocabs.split(",")]:
        backend = GrammarBackend(_tokenizer_dir(root, vocab_size), vocab_size)
        for batch in [int(b) for b in args.batches.split(",")]:
            times = time_steps(backend, batch, args.steps, False, seed=batch)[4:]  # warm
            median = statistics.median(times)
            print(
                f"vocab {vocab_size:6d} batch {batch:3d}: {median:.3f} ms/step median, "
                f"{statistics.mean(times):.3f} mean ({median / batch * 1e3:.1f} us/row)",
                flush=True,
            )


if __name__ == "__main__":
    with torch.inference_mode():
        main()

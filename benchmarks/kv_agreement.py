"""Per-step greedy agreement of one model over two KV pool dtypes (e.g. fp8 e4m3 against bf16):
the same weights, the same prompts; the baseline pool decodes greedily, the other is fed the
baseline's tokens (teacher-forced) so that every step compares logits on the same prefix.

`python benchmarks/kv_agreement.py --model DIR --kv-dtypes auto,fp8_e4m3` (CPU or GPU), or
called by bench_fp8_kv.py. Counts as worker_agreement.py does: agreed, ties (the baseline's top-2
margin within tau), true mismatches; and the logit error distribution.
"""

from __future__ import annotations

import argparse
import time

import torch

from yaie.worker_service.config import KV_CACHE_DTYPES
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.kv_pool import KVPool


def kv_dtype_of(name: str, model_dtype: torch.dtype) -> torch.dtype:
    return model_dtype if name == "auto" else KV_CACHE_DTYPES[name]


def _ints(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def _batch(tokens, starts, tables, block_size, device) -> ForwardBatch:
    """Request b runs tokens[b] at positions starts[b].. over its blocks tables[b]."""
    positions = [starts[b] + i for b, run in enumerate(tokens) for i in range(len(run))]
    rows = [b for b, run in enumerate(tokens) for _ in run]
    slots = [
        tables[b][p // block_size] * block_size + p % block_size
        for b, p in zip(rows, positions, strict=True)
    ]
    query_start = [0]
    for run in tokens:
        query_start.append(query_start[-1] + len(run))
    return ForwardBatch(
        input_ids=_ints([t for run in tokens for t in run], torch.int64, device),
        positions=_ints(positions, torch.int64, device),
        slots=_ints(slots, torch.int64, device),
        block_tables=_ints(tables, torch.int32, device),
        seq_lens=_ints(
            [s + len(r) for s, r in zip(starts, tokens, strict=True)], torch.int32, device
        ),
        query_start=_ints(query_start, torch.int32, device),
        max_query_len=max(len(run) for run in tokens),
        is_decode=all(len(run) == 1 for run in tokens),
        logits_indices=_ints([end - 1 for end in query_start[1:]], torch.int64, device),
    )


@torch.inference_mode()
def decode(model, kv_dtype: torch.dtype, prompts, steps: int, forced=None, block_size: int = 16):
    """Prefills prompts (one batch), then `steps` batched decode steps; returns (tokens
    [B, steps], logits [B, steps, vocab] fp32). forced [B, steps]: the tokens fed instead of
    the greedy ones (teacher forcing)."""
    device = next(model.parameters()).device
    per_seq = [-(-(len(p) + steps) // block_size) for p in prompts]
    pool = KVPool(
        model.num_layers, model.num_kv_heads, model.head_dim, kv_dtype, device, block_size,
        sum(per_seq),
    )  # fmt: skip
    tables, first = [], 0
    for n in per_seq:
        tables.append(list(range(first, first + n)) + [0] * (max(per_seq) - n))
        first += n
    tokens, logits = [], []
    runs, starts = [list(p) for p in prompts], [0] * len(prompts)
    for t in range(steps):
        out = model.forward(
            _batch(runs, starts, tables, block_size, device), pool.cache, pool.scales
        )
        logits.append(out)
        chosen = out.argmax(-1) if forced is None else forced[:, t]
        tokens.append(chosen)
        starts = [s + len(r) for s, r in zip(starts, runs, strict=True)]
        runs = [[tok] for tok in chosen.tolist()]
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def compare(base_logits: torch.Tensor, logits: torch.Tensor, tau: float) -> dict:
    """Per step: our argmax vs the baseline's; a disagreement is a tie when the baseline prefers
    its token by less than tau. Logit errors |ours - base| over all entries, and relative to
    each step's logit standard deviation."""
    base_top = base_logits.argmax(-1)
    ours = logits.argmax(-1)
    agree = ours == base_top
    deficit = base_logits.gather(-1, base_top[..., None]) - base_logits.gather(-1, ours[..., None])
    ties = (~agree) & (deficit[..., 0] < tau)
    error = (logits - base_logits).abs()
    sample = error.flatten()[:: max(1, error.numel() // 2_000_000)].float()
    scale = base_logits.std(-1).mean().item()
    q50, q99 = (sample.quantile(q).item() for q in (0.5, 0.99))
    return {
        "steps": agree.numel(),
        "agreed": int(agree.sum()),
        "ties": int(ties.sum()),
        "mismatches": int((~agree).sum() - ties.sum()),
        "first_divergence": [int(r.nonzero()[0]) if r.any() else None for r in ~agree],
        "logit_err_q50": q50,
        "logit_err_q99": q99,
        "logit_err_max": error.max().item(),
        "logit_std": scale,
        "top1_logit_err_max": (logits.gather(-1, base_top[..., None]) - base_logits.gather(
            -1, base_top[..., None])).abs().max().item(),
    }  # fmt: skip


def measure(model, prompts, steps: int, base: str, others: list[str], tau: float) -> dict:
    """{kv dtype name: compare(...)} of each of others against the baseline pool dtype."""
    base_dtype = kv_dtype_of(base, model.dtype)
    base_tokens, base_logits = decode(model, base_dtype, prompts, steps)
    results = {}
    for name in others:
        _, logits = decode(model, kv_dtype_of(name, model.dtype), prompts, steps, base_tokens)
        results[name] = compare(base_logits, logits, tau)
    return results


def random_prompts(vocab: int, lengths: list[int], seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="model dtype (default bf16 on CUDA, else fp32)")
    p.add_argument("--base", default="auto", help="baseline KV dtype (auto = the model's)")
    p.add_argument("--kv-dtypes", default="fp8_e4m3", help="comma list compared to --base")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--lengths", default="1,7,16,17,100,255,256,513", help="random prompts")
    p.add_argument("--text", action="append", default=[], help="text prompts (real models)")
    p.add_argument("--tau", type=float, default=0.0, help="tie threshold on the top-2 margin")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)  # fmt: skip
    model = load_model(args.model, device, dtype, "auto")
    if args.text:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        prompts = [tokenizer(text).input_ids for text in args.text]
    else:
        prompts = random_prompts(model.vocab_size, [int(n) for n in args.lengths.split(",")])
    start = time.perf_counter()
    results = measure(model, prompts, args.steps, args.base, args.kv_dtypes.split(","), args.tau)
    print(f"{len(prompts)} prompts x {args.steps} steps in {time.perf_counter() - start:.1f} s")
    for name, r in results.items():
        print(f"{name} vs {args.base}: {r}")


if __name__ == "__main__":
    main()

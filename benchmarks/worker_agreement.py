"""Greedy agreement of the worker's ModelRunner with transformers (bench_worker.py's first half):
both greedy over the same prompts, divergences classed as ties when the reference's top-2 margin
is within the bf16 noise measured on transformers itself."""

from __future__ import annotations

import time

import torch

from yaie.kernels.sampling import SamplingConfig
from yaie.worker_service.protocol import NewRequestSpec, Plan, RunEntry, StepOutput
from yaie.worker_service.step.runner import ModelRunner

GREEDY = SamplingConfig(temperature=0.0)
GREEDY_TOP2 = SamplingConfig(temperature=0.0, top_logprobs=2)


class Blocks:
    """A free list over the pool's blocks."""

    def __init__(self, block_size: int, num_blocks: int) -> None:
        self.block_size, self.free = block_size, list(range(num_blocks - 1, -1, -1))

    def take(self, num_tokens: int) -> list[int]:
        return [self.free.pop() for _ in range(-(-num_tokens // self.block_size))]

    def give(self, ids: list[int]) -> None:
        self.free.extend(ids)


def step(runner: ModelRunner, table, step_id: int, new=(), run=(), release=()) -> StepOutput:
    out = runner.launch(table, Plan(step_id, list(new), list(run), list(release))).wait()
    assert not out.error and not out.request_errors, (out.error, out.request_errors)
    return out


def runner_resync(runner, blocks: Blocks, prompts, refs, tau: float) -> tuple[list, list]:
    """Greedy on the runner, all prompts batched (prefills, then graph decodes). Each step is
    compared with the fp32 reference; at a divergence the request is dropped and re-sent with the
    reference's tokens so far (a prefill), so every one of the steps is compared. Returns per
    prompt (agreed, ties, mismatches, first divergence step) and the divergences' details."""
    table = runner.new_table()
    steps = len(refs[0][0])
    pos = [0] * len(prompts)  # reference tokens confirmed so far
    counts = [[0, 0, 0, None] for _ in prompts]
    details = []
    req = {i: (i, []) for i in range(len(prompts))}  # prompt -> (request id, blocks)
    new = {i: prompts[i] for i in range(len(prompts))}  # prompts to (re)send with their tokens
    next_id, step_id, release = len(prompts), 0, []
    while any(p < steps for p in pos):
        plan_new, run, live = [], [], [i for i in range(len(prompts)) if pos[i] < steps]
        for i in live:
            rid, owned = req[i]
            if i in new:
                owned.extend(blocks.take(len(new[i]) + steps))
                plan_new.append(NewRequestSpec(rid, new[i], len(prompts[i]), 0, GREEDY_TOP2))
                run.append(RunEntry(rid, len(new[i]), list(owned)))
            else:
                run.append(RunEntry(rid, 1, []))
        new = {}
        step_id += 1
        out = step(runner, table, step_id, plan_new, run, release)
        release = []
        for k, i in enumerate(live):
            token, (ref, ref_logits) = out.token_ids[k], refs[i]
            t = pos[i]
            pos[i] += 1
            if token == ref[t]:
                counts[i][0] += 1
                continue
            deficit = (ref_logits[t, ref[t]] - ref_logits[t, token]).item()
            top2 = ref_logits[t].topk(2).values
            tie = deficit < tau
            counts[i][1 if tie else 2] += 1
            if counts[i][3] is None:
                counts[i][3] = t
            ours = out.top_logprobs[2 * k] - out.top_logprobs[2 * k + 1]
            details.append((i, t, (top2[0] - top2[1]).item(), deficit, ours, tie))
            rid, owned = req[i]  # re-sync: drop the request, re-send prompt + reference so far
            release.append(rid)
            blocks.give(owned)
            if pos[i] < steps:
                req[i] = (next_id, [])
                new[i] = prompts[i] + ref[: pos[i]]
                next_id += 1
    step(runner, table, step_id + 1, release=release + [r for r, _ in req.values()])
    for _, owned in req.values():
        blocks.give(owned)
    return counts, details


def teacher_forced(hf16, prompt: list[int], ref: list[int], ref_logits, tau: float, device):
    """transformers bf16 against the fp32 reference at every step, on the reference's prefix."""
    with torch.no_grad():
        ids = torch.tensor([prompt + ref], device=device)
        logits = hf16(ids).logits[0, len(prompt) - 1 : -1].float()
    counts = [0, 0, 0, None]
    for t, token in enumerate(logits.argmax(-1).tolist()):
        if token == ref[t]:
            counts[0] += 1
            continue
        tie = (ref_logits[t, ref[t]] - ref_logits[t, token]).item() < tau
        counts[1 if tie else 2] += 1
        counts[3] = t if counts[3] is None else counts[3]
    return counts


def hf_greedy(model, prompt: list[int], steps: int, device) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy generate (no early stop): tokens and raw logits [steps, vocab] fp32."""
    ids = torch.tensor([prompt], device=device)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    logits = torch.cat([step_logits.float() for step_logits in out.logits])
    return out.sequences[0, len(prompt) :].tolist(), logits


def bf16_ulp(x: float) -> float:
    return 2.0 ** (torch.tensor(abs(x)).log2().floor().item() - 7)


def noise_threshold(hf32, hf16, sequences: list[list[int]], device) -> tuple[float, float, float]:
    """bf16 noise on the top-2 margin, measured on transformers itself: teacher-forced logits of
    the same sequences in bf16 and fp32; returns (q99 and max of |margin error|, median |top1|)."""
    errors, tops = [], []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq], device=device)
            l32 = hf32(ids).logits[0].float()
            l16 = hf16(ids).logits[0].float()
            top = l32.topk(2, dim=-1)
            a, b = top.indices[:, 0:1], top.indices[:, 1:2]
            m32 = top.values[:, 0] - top.values[:, 1]
            m16 = (l16.gather(1, a) - l16.gather(1, b)).squeeze(1)
            errors.append((m16 - m32).abs().cpu())
            tops.append(top.values[:, 0].abs().cpu())
    errors = torch.cat(errors)
    return errors.quantile(0.99).item(), errors.max().item(), torch.cat(tops).median().item()


def describe_refs(prompts, refs, tau: float) -> None:
    """How hard the reference is: distinct tokens, repeats of the input token, top-2 margins."""
    margins = torch.cat([r[1].topk(2, dim=-1).values.diff(dim=-1).neg().flatten() for r in refs])
    repeats = sum(
        t == ([*p, *r[0]][len(p) + k - 1])
        for p, r in zip(prompts, refs, strict=True)
        for k, t in enumerate(r[0])
    )
    distinct = [len(set(r[0])) for r in refs]
    print(
        f"reference: distinct tokens per prompt {distinct}; next token == input token in "
        f"{repeats}/{margins.numel()} steps; top-2 margin min {margins.min().item():.3f}, "
        f"median {margins.median().item():.3f}, below tau in {(margins < tau).sum().item()} "
        "steps"
    )


def agreement(runner, blocks, model_dir, device, steps: int, vocab: int):
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(1)
    lengths = [1, 7, 16, 17, 100, 255, 256, 513]
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
    auto = transformers.AutoModelForCausalLM
    hf32 = auto.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    hf16 = auto.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    start = time.perf_counter()
    refs = [hf_greedy(hf32, p, steps, device) for p in prompts]
    print(f"transformers fp32 generate, 8 x {steps}: {time.perf_counter() - start:.1f} s")
    q99, err_max, top1 = noise_threshold(
        hf32, hf16, [p + r[0] for p, r in zip(prompts, refs, strict=True)], device
    )
    tau = max(q99, 2 * bf16_ulp(top1))
    print(
        f"bf16 margin noise (transformers bf16 vs fp32, teacher-forced): q99 {q99:.4f}, "
        f"max {err_max:.4f}; median |top1 logit| {top1:.2f} (bf16 ulp {bf16_ulp(top1):.4f}); "
        f"tie threshold tau = max(q99, 2 ulp) = {tau:.4f}"
    )
    describe_refs(prompts, refs, tau)
    counts, details = runner_resync(runner, blocks, prompts, refs, tau)
    hf_counts = [
        teacher_forced(hf16, p, r[0], r[1], tau, device) for p, r in zip(prompts, refs, strict=True)
    ]
    for name, rows in (("runner", counts), ("hf-bf16", hf_counts)):
        for i, (agreed, ties, bad, first) in enumerate(rows):
            print(
                f"  {name} prompt {i} (len {lengths[i]}): {agreed}/{steps} agreed, {ties} ties, "
                f"{bad} mismatches, first divergence at step {first}"
            )
    for i, t, margin, deficit, ours, tie in details:
        print(
            f"  runner divergence prompt {i} step {t}: ref top-2 margin {margin:.4f}, ref "
            f"deficit of our token {deficit:.4f}, our top-2 margin {ours:.4f} -> "
            f"{'tie' if tie else 'MISMATCH'}"
        )
    del hf32, hf16
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows = {
        name: [sum(r[k] for r in rows) for k in range(3)]
        for name, rows in (("runner", counts), ("hf-bf16", hf_counts))
    }
    # The brief's count: each prompt compared only up to its first divergence.
    firsts = {i: tie for i, _, _, _, _, tie in reversed(details)}  # prompt -> first one a tie?
    agreed = sum(r[3] if r[3] is not None else steps for r in counts)
    ties = sum(firsts.values())
    rows["runner to 1st div."] = [agreed, ties, len(firsts) - ties]
    return rows, tau, len(prompts) * steps

"""The worker's ModelRunner on a Qwen3-0.6B-shaped random model: greedy agreement with
transformers over 64 steps, and decode step time at batch 1/64/256 x 1k contexts next to its
roofline. `python benchmarks/bench_worker.py` (GPU); `... --tiny` (a quick CPU check)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from yaie.cli.builtin_model import write_random_model
from yaie.worker_service.kv_pool import KVPool
from yaie.worker_service.loader import load_model
from yaie.worker_service.plan import NewRequestSpec, Plan, RunEntry, StepOutput
from yaie.worker_service.runner import ModelRunner

# Qwen3-0.6B's config.json (Qwen/Qwen3-0.6B): the shape only, weights random.
QWEN3_0_6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                  tie_word_embeddings=True, max_position_embeddings=40960, rms_norm_eps=1e-6,
                  attention_bias=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=2048, tie_word_embeddings=True,
            max_position_embeddings=2048)  # fmt: skip
GREEDY = dict(temperature=0.0)
GREEDY_TOP2 = dict(temperature=0.0, top_logprobs=2)


class Blocks:
    """A free list over the pool's blocks."""

    def __init__(self, block_size: int, num_blocks: int) -> None:
        self.block_size, self.free = block_size, list(range(num_blocks - 1, -1, -1))

    def take(self, num_tokens: int) -> list[int]:
        return [self.free.pop() for _ in range(-(-num_tokens // self.block_size))]

    def give(self, ids: list[int]) -> None:
        self.free.extend(ids)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read + written (median of 20)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(23):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times[3:])


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
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                         min_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)  # fmt: skip
    logits = torch.cat([step_logits.float() for step_logits in out.logits])
    return out.sequences[0, len(prompt) :].tolist(), logits


def bf16_ulp(x: float) -> float:
    return 2.0 ** (torch.tensor(abs(x)).log2().floor().item() - 7)


def compare(ours: list[int], ref: list[int], ref_logits: torch.Tensor, tau: float) -> tuple:
    """(agreed steps, tie, mismatch, step, reference margin, reference deficit of our token).
    Stops at the first divergence: a tie when our token's reference logit is within tau of the
    reference's best (the reference's top-2 margin is then below tau too)."""
    for t, (a, b) in enumerate(zip(ours, ref, strict=True)):
        if a != b:
            top2 = ref_logits[t].topk(2).values
            margin = (top2[0] - top2[1]).item()
            deficit = (ref_logits[t, b] - ref_logits[t, a]).item()
            tie = deficit < tau
            return t, int(tie), int(not tie), t, margin, deficit
    return len(ref), 0, 0, None, None, None


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
    repeats = sum(t == ([*p, *r[0]][len(p) + k - 1]) for p, r in zip(prompts, refs, strict=True)
                  for k, t in enumerate(r[0]))  # fmt: skip
    distinct = [len(set(r[0])) for r in refs]
    print(f"reference: distinct tokens per prompt {distinct}; next token == input token in "
          f"{repeats}/{margins.numel()} steps; top-2 margin min {margins.min().item():.3f}, "
          f"median {margins.median().item():.3f}, below tau in {(margins < tau).sum().item()} "
          "steps")  # fmt: skip


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
    print(f"bf16 margin noise (transformers bf16 vs fp32, teacher-forced): q99 {q99:.4f}, "
          f"max {err_max:.4f}; median |top1 logit| {top1:.2f} (bf16 ulp {bf16_ulp(top1):.4f}); "
          f"tie threshold tau = max(q99, 2 ulp) = {tau:.4f}")  # fmt: skip
    describe_refs(prompts, refs, tau)
    counts, details = runner_resync(runner, blocks, prompts, refs, tau)
    hf_counts = [
        teacher_forced(hf16, p, r[0], r[1], tau, device) for p, r in zip(prompts, refs, strict=True)
    ]
    for name, rows in (("runner", counts), ("hf-bf16", hf_counts)):
        for i, (agreed, ties, bad, first) in enumerate(rows):
            print(f"  {name} prompt {i} (len {lengths[i]}): {agreed}/{steps} agreed, {ties} ties, "
                  f"{bad} mismatches, first divergence at step {first}")  # fmt: skip
    for i, t, margin, deficit, ours, tie in details:
        print(f"  runner divergence prompt {i} step {t}: ref top-2 margin {margin:.4f}, ref "
              f"deficit of our token {deficit:.4f}, our top-2 margin {ours:.4f} -> "
              f"{'tie' if tie else 'MISMATCH'}")  # fmt: skip
    del hf32, hf16
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rows = {name: [sum(r[k] for r in rows) for k in range(3)]
            for name, rows in (("runner", counts), ("hf-bf16", hf_counts))}  # fmt: skip
    # The brief's count: each prompt compared only up to its first divergence.
    firsts = {i: tie for i, _, _, _, _, tie in reversed(details)}  # prompt -> first one a tie?
    agreed = sum(r[3] if r[3] is not None else steps for r in counts)
    ties = sum(firsts.values())
    rows["runner to 1st div."] = [agreed, ties, len(firsts) - ties]
    return rows, tau, len(prompts) * steps


def timed_decode(runner, blocks, batch: int, context: int, warmup: int, iters: int, vocab: int):
    """Prefills batch requests, then times production decode steps: lock-step (launch + wait),
    pipelined (launch N+1 before wait N), and the bare graph replay. Mean seq_len ~ context."""
    device = runner.device
    prompt_len = context - warmup - iters // 2 - 1  # the timed steps read ~context tokens
    gen = torch.Generator().manual_seed(batch)
    table = runner.new_table()
    step_id = 0
    chunk = max(1, 16384 // prompt_len)  # requests per prefill step
    owned: list[int] = []
    for first in range(0, batch, chunk):
        ids = range(first, min(batch, first + chunk))
        new = [
            NewRequestSpec(i, torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(),
                           prompt_len, 0, GREEDY) for i in ids
        ]  # fmt: skip
        taken = [blocks.take(prompt_len + warmup + 2 * iters + 40) for _ in ids]
        owned += [b for t in taken for b in t]
        run = [RunEntry(i, prompt_len, t) for i, t in zip(ids, taken, strict=True)]
        step_id += 1
        step(runner, table, step_id, new, run)
    decode = [RunEntry(i, 1, []) for i in range(batch)]
    for _ in range(warmup):
        step_id += 1
        step(runner, table, step_id, run=decode)
    seq_start = table.get(0).num_tokens  # every request has the same length
    walls, device_ms, launches = [], [], []
    for _ in range(iters):
        step_id += 1
        start = time.perf_counter()
        pending = runner.launch(table, Plan(step_id, [], decode, []))
        launched = time.perf_counter()
        out = pending.wait()
        walls.append(time.perf_counter() - start)
        launches.append(launched - start)
        device_ms.append(out.forward_ms + out.sample_ms)
        assert not out.error and min(out.token_ids) >= 0
    sync(device)
    start = time.perf_counter()
    pending = None
    for _ in range(iters):
        step_id += 1
        nxt = runner.launch(table, Plan(step_id, [], decode, []))
        if pending is not None:
            pending.wait()
        pending = nxt
    pending.wait()
    pipelined = (time.perf_counter() - start) / iters
    step_id = host_checks(runner, table, decode, step_id, batch)
    replay = None
    if runner.graphs is not None:
        graph = runner.graphs.graphs[batch]
        times = []
        for _ in range(iters):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        replay = statistics.median(times)
        profile_replay(graph, batch)
    step_id += 1
    step(runner, table, step_id, release=range(batch))
    blocks.give(owned)
    mean_seq = seq_start + (iters - 1) / 2 + 1  # seq_len the lock-step steps read, on average
    return dict(wall=statistics.median(walls) * 1e3, device=statistics.median(device_ms),
                launch=statistics.median(launches) * 1e3, pipelined=pipelined * 1e3,
                replay=replay, mean_seq=mean_seq)  # fmt: skip


def host_checks(runner, table, decode, step_id: int, batch: int) -> int:
    """Does launch() block on the device (launched behind a ~25 ms sleep kernel)? And where the
    host time of 20 lock-step steps goes (cProfile, by own time)."""
    import cProfile
    import io
    import pstats

    if runner.device.type == "cuda":
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        torch.cuda._sleep(50_000_000)
        end.record()
        start = time.perf_counter()
        pending = runner.launch(table, Plan(step_id + 1, [], decode, []))
        launch = (time.perf_counter() - start) * 1e3
        pending.wait()
        print(f"batch {batch}: launch() behind a {begin.elapsed_time(end):.1f} ms sleep kernel "
              f"took {launch:.3f} ms on the host")  # fmt: skip
        step_id += 1
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        step_id += 1
        runner.launch(table, Plan(step_id, [], decode, [])).wait()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    body = text.getvalue()
    print(f"batch {batch}: host profile of 20 lock-step steps (by own time):")
    print(body[body.find("ncalls") :].rstrip())
    return step_id


def profile_replay(graph, batch: int) -> None:
    """The kernels of one graph replay, by total device time (where the step's time goes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    count = sum(e.count for e in events)
    print(f"graph replay batch {batch}: {count} kernels, {total / 1e3:.3f} ms of kernel time")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:8]:
        print(f"  {e.device_time_total / 1e3:8.3f} ms  x{e.count:4d}  {e.key[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a check)")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--steps", type=int, default=64, help="greedy steps compared")
    parser.add_argument("--iters", type=int, default=50, help="timed decode steps per batch")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    shape = TINY if args.tiny else QWEN3_0_6B
    dtype = torch.float32 if args.tiny else torch.bfloat16
    context = 64 if args.tiny else args.context
    batches = [1, 4, 8] if args.tiny else [int(b) for b in args.batches.split(",")]

    copy_bw = copy_bandwidth(device, (64 if args.tiny else 1024) * 2**20)
    print(f"copy bandwidth (read + write): {copy_bw / 1e12:.3f} TB/s")
    model_dir = Path(tempfile.mkdtemp(prefix="bench-worker-")) / "qwen3-0.6b-random"
    start = time.perf_counter()
    write_random_model(model_dir, "Qwen3ForCausalLM", seed=0, dtype=dtype, **shape)
    print(f"wrote {model_dir} in {time.perf_counter() - start:.1f} s")
    model = load_model(str(model_dir), device, dtype, "auto")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    elt = torch.empty((), dtype=dtype).element_size()
    kv_token_bytes = model.num_layers * 2 * model.num_kv_heads * model.head_dim * elt
    block_size = 16
    per_request = -(-(context + args.iters * 2 + 48) // block_size)
    num_blocks = max(batches) * per_request + 8 * -(-(513 + args.steps) // block_size) + 16
    pool = KVPool(model.num_layers, model.num_kv_heads, model.head_dim, dtype, device,
                  block_size, num_blocks)  # fmt: skip
    start = time.perf_counter()
    runner = ModelRunner(model, pool, use_cuda_graphs=device.type == "cuda")
    print(f"weights {weight_bytes / 1e9:.4f} GB, KV {kv_token_bytes} B/token, pool {num_blocks} "
          f"blocks; runner + graph capture {time.perf_counter() - start:.1f} s")  # fmt: skip
    blocks = Blocks(block_size, num_blocks)

    rows, tau, total = agreement(runner, blocks, model_dir, device, args.steps, model.vocab_size)
    # The same check on an untied variant: its lm_head (std 2/sqrt(hidden), write_random_model)
    # gives small logits with many near-ties, a harder test than the tied model's.
    untied_dir = model_dir.parent / "untied"
    write_random_model(untied_dir, "Qwen3ForCausalLM", seed=0, dtype=dtype,
                       **{**shape, "tie_word_embeddings": False})  # fmt: skip
    untied = load_model(str(untied_dir), device, dtype, "auto")
    untied_pool = KVPool(untied.num_layers, untied.num_kv_heads, untied.head_dim, dtype, device,
                         block_size, 8 * -(-(513 + 2 * args.steps) // block_size) + 16)  # fmt: skip
    untied_runner = ModelRunner(untied, untied_pool, device.type == "cuda", max_graph_batch_size=8)
    untied_blocks = Blocks(block_size, untied_pool.num_blocks)
    print("untied variant:")
    rows2, tau2, _ = agreement(untied_runner, untied_blocks, untied_dir, device, args.steps,
                               untied.vocab_size)  # fmt: skip
    del untied, untied_pool, untied_runner
    if device.type == "cuda":
        torch.cuda.empty_cache()

    results = []
    for b in batches:
        r = timed_decode(runner, blocks, b, context, 8, args.iters, model.vocab_size)
        read = weight_bytes + b * model.config.hidden_size * elt  # + B embedding rows
        read += b * r["mean_seq"] * kv_token_bytes
        r.update(batch=b, bytes=read, roofline=read / copy_bw * 1e3)
        results.append(r)
        print(f"batch {b}: {r}")

    print(f"\nagreement over {total} greedy steps (8 prompts x {args.steps}), reference "
          f"transformers fp32, tie threshold {tau:.4f}:")  # fmt: skip
    for name, (agreed, ties, bad) in rows.items():
        print(f"  {name:19s} agreed {agreed}/{total}, ties {ties}, true mismatches {bad}")
    print(f"untied variant, tie threshold {tau2:.4f}:")
    for name, (agreed, ties, bad) in rows2.items():
        print(f"  {name:19s} agreed {agreed}/{total}, ties {ties}, true mismatches {bad}")
    print(f"\ndecode step, context ~{context}, copy {copy_bw / 1e12:.3f} TB/s, weights "
          f"{weight_bytes / 1e9:.3f} GB")  # fmt: skip
    print(
        "| batch | bytes read (GB) | roofline ms | graph replay ms | step device ms | launch host "
        "ms | step wall ms (launch+wait) | pipelined ms/step | roofline/replay | roofline/wall | "
        "roofline/pipelined |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        replay = r["replay"] if r["replay"] is not None else float("nan")
        print(f"| {r['batch']} | {r['bytes'] / 1e9:.3f} | {r['roofline']:.3f} | {replay:.3f} | "
              f"{r['device']:.3f} | {r['launch']:.3f} | {r['wall']:.3f} | {r['pipelined']:.3f} | "
              f"{r['roofline'] / replay:.0%} | {r['roofline'] / r['wall']:.0%} | "
              f"{r['roofline'] / r['pipelined']:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()

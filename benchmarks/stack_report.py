"""The stack bench's closing table: each figure beside its roofline (stack_roofline.py) and,
where the issue set one, its bar."""

from __future__ import annotations

import math

import stack_roofline as rf
from stack_models import SHAPES, model_shape

from yaie.cli import bench
from yaie.cli.bench import datasets as ds


def roofline_of(
    shape: rf.ModelShape, config: bench.BenchConfig, vocab: int, ceil: tuple, block: int, kv: float
) -> rf.Roofline:
    requests = bench.make_requests(config, vocab)
    if config.dataset == "shared-prefix":  # the first of each group computes the system prompt
        shared = config.gsp_system_prompt_len // block * block
        first = range(0, len(requests), config.gsp_prompts_per_group)
        cached = [0 if i in first else shared for i in range(len(requests))]
    else:
        cached = [0] * len(requests)
    triples = [(len(r.prompt_ids), c, r.output_len) for r, c in zip(requests, cached, strict=True)]
    return rf.simulate(shape, triples, ceil[0], ceil[1], kv_capacity_tokens=kv)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def bar_row(name, ours, peer, floor, bar, passed) -> tuple[str, ...]:
    """One table row: the figure, ours, the peer's, the roofline, ours / roofline, the bar."""
    ratio = ours / floor if ours is not None and floor else None
    if ratio is not None and "ms" in name:  # a latency: the floor over ours is the fraction
        ratio = floor / ours if ours else None
    verdict = "-" if passed is None else ("PASS" if passed else "FAIL")
    return name, fmt(ours), peer, fmt(floor), fmt(ratio, 2), bar, verdict


def table(rows: list[tuple[str, ...]]) -> str:
    head = ("figure", "ours", "peer", "roofline", "of roofline", "bar", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def bar_rows(results: dict, shape_name: str, cfg: dict, info, ceil, kv_tokens) -> list:
    _, config = SHAPES[shape_name]
    shape = model_shape(config)
    vocab, block = info.vocab_size, info.block_size
    rows = [bar_row("copy bandwidth, TB/s (read + write)", ceil[0] / 1e12, "-", None, "-", None)]
    qwen, big = shape_name == "qwen3-0.6b", shape_name == "llama-3.1-8b"
    if "random" in results:
        m, hf = results["random"], results.get("hf", {})
        floor = roofline_of(shape, cfg["random"], vocab, ceil, block, kv_tokens).output_tok_s
        peer = (
            f"HF {fmt(hf['output_tok_s'])} ({hf['completed']}/{hf['num_requests']} req)"
            if "output_tok_s" in hf
            else "HF: " + hf.get("error", "not run")[:40]
        )
        bar, ok = ("-", None)
        if qwen:
            bar, ok = ">= 15,000", m["output_throughput"] >= 15000
        elif big:
            bar, ok = ">= 3,800", m["output_throughput"] >= 3800
        name = f"random {cfg['random'].num_prompts} req, output tok/s ({m['completed']} done)"
        rows.append(bar_row(name, m["output_throughput"], peer, floor, bar, ok))
    if "light" in results:
        m = results["light"]
        c = cfg["light"]
        itl = rf.step_floor_s(shape, [c.fixed_input_len + c.fixed_output_len // 2], ceil[0])
        ttft = shape.prefill_flops(c.fixed_input_len, 0) / ceil[1] + shape.weight_bytes / ceil[0]
        rows.append(
            bar_row(
                "light load median ITL, ms",
                m["median_itl_ms"],
                "-",
                itl * 1e3,
                "<= 6 ms",
                m["median_itl_ms"] <= 6 if qwen else None,
            )
        )
        rows.append(
            bar_row(
                "light load median TTFT, ms",
                m["median_ttft_ms"],
                "-",
                ttft * 1e3,
                "<= 40 ms",
                m["median_ttft_ms"] <= 40 if qwen else None,
            )
        )
    c = cfg["shared"]
    if "shared" in results:
        m = results["shared"]
        cached_floor = roofline_of(shape, c, vocab, ceil, block, kv_tokens).output_tok_s
        rows.append(
            bar_row(
                "shared-prefix, cache, output tok/s",
                m["output_throughput"],
                "-",
                cached_floor,
                "-",
                None,
            )
        )
        prompt_len = c.gsp_system_prompt_len + c.gsp_question_len
        total_in = c.gsp_num_groups * c.gsp_prompts_per_group * prompt_len
        ideal = (
            ds.ideal_cached_tokens(
                c.gsp_num_groups, c.gsp_prompts_per_group, c.gsp_system_prompt_len, block
            )
            / total_in
        )
        rows.append(
            bar_row(
                "shared-prefix hit rate / ideal",
                m["cache_hit_rate"] / ideal,
                f"ideal {ideal:.3f}",
                None,
                ">= 0.90",
                m["cache_hit_rate"] >= 0.9 * ideal,
            )
        )
    if "shared_nocache" in results:
        m = results["shared_nocache"]
        floor = roofline_of(shape, c, vocab, ceil, 10**9, kv_tokens).output_tok_s  # no block hits
        rows.append(
            bar_row(
                "shared-prefix, no cache, output tok/s",
                m["output_throughput"],
                "-",
                floor,
                "-",
                None,
            )
        )
        if "shared" in results:
            ratio = results["shared"]["output_throughput"] / m["output_throughput"]
            rows.append(
                bar_row(
                    "shared-prefix cache / no cache",
                    ratio,
                    "-",
                    cached_floor / floor,
                    ">= 4x",
                    ratio >= 4,
                )
            )
    rows += multi_turn_rows(results, cfg["multiturn"], vocab, block)
    if "random_single_frame" in results:
        m = results["random_single_frame"]
        rows.append(
            bar_row(
                "random, one frame per request, output tok/s",
                m["output_throughput"],
                "-",
                None,
                "diagnostic",
                None,
            )
        )
    rows.append(
        (
            "gRPC split vs in-process worker",
            "-",
            "-",
            "-",
            "-",
            "<= 5% cost",
            "see benchmarks/bench_split.py",
        )
    )
    return rows


def multi_turn_rows(results: dict, config: bench.BenchConfig, vocab: int, block: int) -> list:
    """How TTFT grows from the first turn to the last, with and without the prefix cache, and
    the last turn's hit rate beside its block-granular ideal."""
    last, rows, ttft = config.mt_turns, [], {}
    for name, label in (("multiturn", "cache"), ("multiturn_nocache", "no cache")):
        turns = results.get(name, {}).get("turns")
        if not turns:
            continue
        ttft[name] = turns[-1]["mean_ttft_ms"]
        name_ = f"multi-turn, {label}, turn {last} mean TTFT, ms"
        peer = f"turn 1: {fmt(turns[0]['mean_ttft_ms'])}"
        rows.append(bar_row(name_, ttft[name], peer, None, "-", None))
    if "multiturn" in ttft:
        chat = bench.make_conversations(config, vocab)[0]
        ideal = ds.ideal_multi_turn_cached(chat, last, block) / chat.prompt_len(last)
        rate = results["multiturn"]["turns"][-1]["cache_hit_rate"] / ideal if ideal else None
        name_ = f"multi-turn turn {last} hit rate / ideal"
        rows.append(bar_row(name_, rate, f"ideal {ideal:.3f}", None, "-", None))
    if ttft.get("multiturn") and ttft.get("multiturn_nocache"):
        ratio = ttft["multiturn_nocache"] / ttft["multiturn"]
        name_ = f"multi-turn turn {last} TTFT, no cache / cache"
        rows.append(bar_row(name_, ratio, "-", None, "-", None))
    return rows

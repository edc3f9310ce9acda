"""What `yaie bench` measures: per-request timings in, the field's summary metrics out.

Conventions (as vLLM's benchmark_serving, so numbers compare): TTFT = first frame carrying a
token - request sent; E2E latency = last frame - request sent; TPOT per request =
(E2E - TTFT) / (output tokens - 1), over requests with more than one token; ITL = the gaps
between successive frames that carry tokens, one value per frame (a frame of k tokens counts its
gap once, not k times). Cache hit rate = sum of usage.cached_tokens / sum of usage.prompt_tokens.
A multi-turn run also gets these per turn number (TurnMetrics: TTFT, E2E, hit rate).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field


@dataclass
class RequestResult:
    """One request as the client saw it; times in seconds from time.perf_counter()."""

    prompt_len: int
    requested_output_len: int
    ok: bool = False
    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0  # token ids received
    itls: list[float] = field(default_factory=list)  # gaps between token-carrying frames
    prompt_tokens: int = 0  # the server's usage of the last frame
    cached_tokens: int = 0
    completion_tokens: int = 0
    turn: int = 0  # a multi-turn request's turn number (1-based); 0: no conversation
    output_ids: list[int] | None = None  # when a list, the client appends the ids it receives


@dataclass
class TurnMetrics:
    """The requests of one turn number of a multi-turn run; times in ms."""

    turn: int
    completed: int
    failed: int
    mean_input_tokens: float  # prompt tokens of a completed request (the history so far)
    mean_ttft_ms: float
    median_ttft_ms: float
    p99_ttft_ms: float
    mean_e2e_latency_ms: float
    cache_hit_rate: float  # cached / prompt tokens of this turn's completed requests
    cached_tokens: int


@dataclass
class BenchMetrics:
    """One run's summary; times in ms, rates per second. NaN where nothing was measured."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    p99_itl_ms: float
    mean_e2e_latency_ms: float
    median_e2e_latency_ms: float
    p99_e2e_latency_ms: float
    cache_hit_rate: float
    cached_tokens: int
    max_in_flight: int  # most requests the client had in flight at once
    concurrency: float  # mean requests in flight: sum of E2E latencies / duration
    client_cpu_us_per_frame: float  # the client's own CPU time over the frames it read
    num_frames: int
    errors: list[str] = field(default_factory=list)  # the first few failure messages
    turns: list[TurnMetrics] = field(default_factory=list)  # multi-turn runs only

    def to_dict(self) -> dict:
        """JSON-safe: NaN becomes None (in the per-turn rows too)."""
        values = _json_safe(asdict(self))
        values["turns"] = [_json_safe(turn) for turn in values["turns"]]
        return values


def _json_safe(values: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _stats_ms(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return math.nan, math.nan, math.nan
    ms = [v * 1000.0 for v in values]
    return statistics.fmean(ms), statistics.median(ms), percentile(ms, 99)


def _stats_fields(name: str, stats: tuple[float, float, float]) -> dict[str, float]:
    """BenchMetrics' mean_/median_/p99_<name>_ms fields from _stats_ms's triple."""
    return {
        f"{stat}_{name}_ms": value
        for stat, value in zip(("mean", "median", "p99"), stats, strict=True)
    }


def summarize(
    results: list[RequestResult],
    duration_s: float,
    max_in_flight: int,
    client_cpu_s: float,
) -> BenchMetrics:
    done = [r for r in results if r.ok]
    input_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    cached = sum(r.cached_tokens for r in done)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    itls = [gap for r in done for gap in r.itls]
    num_frames = sum(len(r.itls) + 1 for r in done)
    ttft, tpot, itl = _stats_ms([r.ttft for r in done]), _stats_ms(tpots), _stats_ms(itls)
    e2e = _stats_ms([r.latency for r in done])
    per_s = 1.0 / duration_s if duration_s > 0 else math.nan
    return BenchMetrics(
        completed=len(done),
        failed=len(results) - len(done),
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(done) * per_s,
        input_throughput=input_tokens * per_s,
        output_throughput=output_tokens * per_s,
        total_throughput=(input_tokens + output_tokens) * per_s,
        **_stats_fields("ttft", ttft),
        **_stats_fields("tpot", tpot),
        **_stats_fields("itl", itl),
        **_stats_fields("e2e_latency", e2e),
        cache_hit_rate=cached / input_tokens if input_tokens else 0.0,
        cached_tokens=cached,
        max_in_flight=max_in_flight,
        concurrency=sum(r.latency for r in done) * per_s,
        client_cpu_us_per_frame=client_cpu_s * 1e6 / num_frames if num_frames else math.nan,
        num_frames=num_frames,
        errors=[r.error for r in results if not r.ok][:5],
        turns=turn_metrics(results),
    )


def turn_metrics(results: list[RequestResult]) -> list[TurnMetrics]:
    """One row per turn number of the multi-turn requests among results, in turn order."""
    by_turn: dict[int, list[RequestResult]] = {}
    for r in results:
        if r.turn:
            by_turn.setdefault(r.turn, []).append(r)
    rows = []
    for turn, requests in sorted(by_turn.items()):
        done = [r for r in requests if r.ok]
        prompt = sum(r.prompt_tokens for r in done)
        cached = sum(r.cached_tokens for r in done)
        ttft = _stats_ms([r.ttft for r in done])
        rows.append(
            TurnMetrics(
                turn=turn,
                completed=len(done),
                failed=len(requests) - len(done),
                mean_input_tokens=prompt / len(done) if done else math.nan,
                mean_ttft_ms=ttft[0],
                median_ttft_ms=ttft[1],
                p99_ttft_ms=ttft[2],
                mean_e2e_latency_ms=_stats_ms([r.latency for r in done])[0],
                cache_hit_rate=cached / prompt if prompt else 0.0,
                cached_tokens=cached,
            )
        )
    return rows


_LATENCY_SECTIONS = (
    ("Time to First Token", "ttft"),
    ("Time per Output Token (excl. 1st token)", "tpot"),
    ("Inter-token Latency", "itl"),
    ("End-to-End Latency", "e2e_latency"),
)


def format_table(m: BenchMetrics, title: str = "Serving Benchmark Result") -> str:
    """The readable end-of-run table (the layout of vLLM's / SGLang's report)."""
    rows: list[tuple[str, str] | str] = [
        ("Successful requests:", f"{m.completed}"),
        ("Failed requests:", f"{m.failed}"),
        ("Benchmark duration (s):", f"{m.duration_s:.2f}"),
        ("Total input tokens:", f"{m.total_input_tokens}"),
        ("Total generated tokens:", f"{m.total_output_tokens}"),
        ("Request throughput (req/s):", f"{m.request_throughput:.2f}"),
        ("Input token throughput (tok/s):", f"{m.input_throughput:.2f}"),
        ("Output token throughput (tok/s):", f"{m.output_throughput:.2f}"),
        ("Total token throughput (tok/s):", f"{m.total_throughput:.2f}"),
        ("Cache hit rate (server usage):", f"{m.cache_hit_rate:.4f}"),
        ("Concurrency (mean in flight):", f"{m.concurrency:.2f}"),
        ("Max in flight (client):", f"{m.max_in_flight}"),
        ("Client CPU per frame (us):", f"{m.client_cpu_us_per_frame:.1f}"),
    ]
    for name, key in _LATENCY_SECTIONS:
        rows.append(name)
        short = key.split("_")[0].upper()
        for stat, label in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            rows.append((f"{label} {short} (ms):", f"{getattr(m, f'{stat}_{key}_ms'):.2f}"))
    width = 50
    lines = [f"{' ' + title + ' ':=^{width}}"]
    for row in rows:
        if isinstance(row, str):
            lines.append(f"{row:-^{width}}")
        else:
            lines.append(f"{row[0]:<40}{row[1]:>10}")
    if m.errors:
        lines.append(f"First error: {m.errors[0]}")
    lines.append("=" * width)
    if m.turns:
        lines.append(format_turns(m.turns))
    return "\n".join(lines)


_TURN_COLUMNS = (
    "turn",
    "done",
    "failed",
    "input tok",
    "hit rate",
    "TTFT mean",
    "p50",
    "p99",
    "E2E",
)


def format_turns(turns: list[TurnMetrics]) -> str:
    """The per-turn table of a multi-turn run (times in ms): how TTFT and the cache hit rate
    move as the history grows."""
    rows = [
        (
            f"{t.turn}",
            f"{t.completed}",
            f"{t.failed}",
            f"{t.mean_input_tokens:.0f}",
            f"{t.cache_hit_rate:.4f}",
            f"{t.mean_ttft_ms:.2f}",
            f"{t.median_ttft_ms:.2f}",
            f"{t.p99_ttft_ms:.2f}",
            f"{t.mean_e2e_latency_ms:.2f}",
        )
        for t in turns
    ]
    widths = [max(len(r[i]) for r in [_TURN_COLUMNS, *rows]) for i in range(len(_TURN_COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    head = "  ".join(c.rjust(w) for c, w in zip(_TURN_COLUMNS, widths, strict=True))
    title = " Per turn (times in ms) "
    return "\n".join([f"{title:=^{len(head)}}", head, *lines, "=" * len(head)])

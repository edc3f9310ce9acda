"""A `yaie bench` run's workload: BenchConfig (what is sent and how, with the field's defaults),
the requests or conversations it draws from datasets.py, and its one-line description."""

from __future__ import annotations

import math
from dataclasses import dataclass

from yaie.cli.bench import datasets as ds

DEFAULT_TARGETS = {"yaie": "127.0.0.1:50051", "openai": "http://127.0.0.1:8000"}
BACKENDS = tuple(DEFAULT_TARGETS)


@dataclass(frozen=True)
class BenchConfig:
    """One run: the workload and how it is sent. Defaults are the field's (see --help)."""

    dataset: str = "random"
    num_prompts: int = 256
    random_input_len: int = 1024
    random_output_len: int = 1024
    random_range_ratio: float = ds.NANO_VLLM_RANGE_RATIO
    gsp_num_groups: int = 64
    gsp_prompts_per_group: int = 16
    gsp_system_prompt_len: int = 2048
    gsp_question_len: int = 128
    gsp_output_len: int = 256
    fixed_input_len: int = 128
    fixed_output_len: int = 256
    # multi-turn: conversations of mt_turns turns, each turn's prompt the whole history so far
    # (SGLang's bench_multiturn / vLLM's benchmarks/multi_turn); request_rate is then the rate
    # at which conversations start, max_concurrency caps the turns in flight.
    mt_num_conversations: int = 64
    mt_turns: int = 8
    mt_system_prompt_len: int = 1024
    mt_question_len: int = 128
    mt_output_len: int = 128
    request_rate: float = math.inf  # requests/s, Poisson arrivals; inf: all at once
    max_concurrency: int | None = None
    temperature: float = 0.0
    seed: int = 1
    disable_progress: bool = False
    # Ask for one frame per request (OutputOptions.single_frame): a diagnostic that takes the
    # per-frame streaming cost out; TTFT then equals E2E and there are no ITLs.
    single_frame: bool = False
    # Which API the requests go through: yaie (yaie.v1 over gRPC) or openai (the HTTP API).
    backend: str = "yaie"
    # Structured output: every request's output constrained by this JSON schema (its text);
    # an output may then end (STOP) before its output_len, where its grammar completed.
    json_schema: str | None = None
    # Parallel sampling: each request asks n completions of its prompt (GenerateRequest.n);
    # each completion counts as a request in the metrics (its TTFT from the call's start).
    n: int = 1
    # Each prompt sent this many times as separate requests, one after another (the baseline
    # of --n: the same completions asked one by one).
    repeat_prompts: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "openai" and self.single_frame:
            raise ValueError("--single-frame is a yaie.v1 (gRPC) diagnostic")
        if self.dataset not in ds.DATASETS:
            raise ValueError(f"dataset must be one of {ds.DATASETS}, got {self.dataset!r}")
        if not self.request_rate > 0:
            raise ValueError(f"request rate must be > 0, got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max concurrency must be >= 1, got {self.max_concurrency}")
        if not 1 <= self.n <= 64 or self.repeat_prompts < 1:
            raise ValueError(
                f"n must be in [1, 64] and repeat_prompts >= 1: {self.n}, {self.repeat_prompts}"
            )
        if self.n > 1 and self.backend != "yaie":
            raise ValueError("--n is sent over yaie.v1 (the default backend)")
        if self.dataset == "multi-turn":
            if self.backend != "yaie":
                raise ValueError(
                    "--dataset multi-turn needs each answer's token ids for the next turn's "
                    "prompt: only --backend yaie (gRPC) returns them"
                )
            ds.check_multi_turn(
                self.mt_num_conversations,
                self.mt_turns,
                self.mt_system_prompt_len,
                self.mt_question_len,
                self.mt_output_len,
            )


def make_requests(config: BenchConfig, vocab_size: int) -> list[ds.BenchRequest]:
    """The static workload of a random, shared-prefix or fixed run, each prompt repeat_prompts
    times in a row (multi-turn has none: its prompts hold the answers; see make_conversations)."""
    requests = _draw_requests(config, vocab_size)
    return [r for r in requests for _ in range(config.repeat_prompts)]


def _draw_requests(config: BenchConfig, vocab_size: int) -> list[ds.BenchRequest]:
    c = config
    if c.dataset == "multi-turn":
        raise ValueError("multi-turn prompts exist only as the run goes: use make_conversations")
    if c.dataset == "random":
        return ds.random_requests(
            c.num_prompts,
            c.random_input_len,
            c.random_output_len,
            c.random_range_ratio,
            vocab_size,
            c.seed,
        )
    if c.dataset == "shared-prefix":
        return ds.shared_prefix_requests(
            c.gsp_num_groups,
            c.gsp_prompts_per_group,
            c.gsp_system_prompt_len,
            c.gsp_question_len,
            c.gsp_output_len,
            vocab_size,
            c.seed,
        )
    return ds.fixed_requests(
        c.num_prompts, c.fixed_input_len, c.fixed_output_len, vocab_size, c.seed
    )


def make_conversations(config: BenchConfig, vocab_size: int) -> list[ds.Conversation]:
    c = config
    return ds.multi_turn_conversations(
        c.mt_num_conversations,
        c.mt_turns,
        c.mt_system_prompt_len,
        c.mt_question_len,
        c.mt_output_len,
        vocab_size,
        c.seed,
    )


def describe_workload(config: BenchConfig, drawn: str) -> str:
    """The workload: drawn (its requests' or conversations' lengths), how it is sent, and for
    random its length ranges."""
    sending = (
        "all at once"
        if math.isinf(config.request_rate)
        else (f"{config.request_rate:g} req/s (Poisson)")
    )
    if config.dataset == "multi-turn":
        sending = f"conversations started {sending.replace('req/s', 'per s')}, each turn "
        sending += "once the answer before it is in"
    if config.max_concurrency:
        sending += f", at most {config.max_concurrency} in flight"
    if config.n > 1:
        sending += f", {config.n} completions each"
    if config.repeat_prompts > 1:
        sending += f", each prompt {config.repeat_prompts} times"
    ranges = ""
    if config.dataset == "random":
        low_in, high_in = ds.length_range(config.random_input_len, config.random_range_ratio)
        low_out, high_out = ds.length_range(config.random_output_len, config.random_range_ratio)
        ranges = (
            f" (uniform in [{low_in}, {high_in}] in, [{low_out}, {high_out}] out: "
            f"--random-range-ratio {config.random_range_ratio:.4g})"
        )
    return f"workload: {config.dataset}{ranges}, {drawn}; sent {sending}"

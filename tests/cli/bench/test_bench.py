"""yaie bench against a real `yaie serve` stack (tiny Llama on the CPU): exact token counts,
cache hit rate near the ideal (shared-prefix; multi-turn per turn, and none without the cache),
the JSON record, the concurrency cap, failures counted."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from yaie.cli import bench
from yaie.cli.bench import datasets as ds
from yaie.cli.models.random_model import write_random_model
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

NUM_BLOCKS = 128  # 2048 tokens of KV in blocks of 16
QUIET = dict(disable_progress=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("bench") / "llama", seed=2)


@pytest.fixture(scope="module")
def target(model: Path, tools) -> Iterator[str]:
    with tools.running_stack(model, "--num-blocks", str(NUM_BLOCKS)) as stack:
        yield stack.target


def send(target: str, requests: list[ds.BenchRequest], config: bench.BenchConfig):
    return asyncio.run(bench.send_requests(target, requests, config))


def test_random_dataset_counts_exactly_the_requested_tokens(target: str) -> None:
    """completed == num_prompts; output tokens == sum of requested lengths; input == prompts;
    TTFT <= E2E per request."""
    config = bench.BenchConfig("random", 8, 32, 32, 0.25, seed=5, **QUIET)
    info = asyncio.run(bench.model_info(target))
    requests = bench.make_requests(config, info.vocab_size)
    run = send(target, requests, config)
    m = run.summary()
    assert (m.completed, m.failed) == (8, 0)
    assert m.total_output_tokens == sum(r.output_len for r in requests)
    assert m.total_input_tokens == sum(len(r.prompt_ids) for r in requests)
    assert all(
        r.completion_tokens == r.output_tokens == r.requested_output_len for r in run.results
    )
    assert all(0 < r.ttft <= r.latency for r in run.results)
    assert all(len(r.itls) >= 1 for r in run.results if r.output_tokens > 1)
    assert m.output_throughput > 0 and m.max_in_flight == 8
    assert m.mean_ttft_ms <= m.mean_e2e_latency_ms and m.p99_itl_ms >= m.median_itl_ms


def test_shared_prefix_hit_rate_is_near_the_ideal(target: str) -> None:
    """2 groups x 4 prompts behind a 64-token system prompt (4 blocks): ideal hit rate =
    2 * 3 * 64 / (8 * 72) = 0.667; the server's must be within [0.9 x ideal, ideal] (cache hits
    are whole blocks, so a random 8-token question can add none)."""
    config = bench.BenchConfig(
        "shared-prefix",
        gsp_num_groups=2,
        gsp_prompts_per_group=4,
        gsp_system_prompt_len=64,
        gsp_question_len=8,
        gsp_output_len=8,
        **QUIET,
    )
    m, info = bench.run_workload(target, config)
    ideal = ds.ideal_cached_tokens(2, 4, 64, info.block_size) / (8 * 72)
    assert (m.completed, m.total_input_tokens, m.total_output_tokens) == (8, 8 * 72, 8 * 8)
    assert 0.9 * ideal <= m.cache_hit_rate <= ideal + 1e-9


def test_cli_fixed_dataset_appends_one_json_record_per_run(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "runs.jsonl"
    argv = [
        "--target",
        target,
        "--dataset",
        "fixed",
        "--num-prompts",
        "4",
        "--fixed-input-len",
        "20",
        "--fixed-output-len",
        "6",
        "--output-file",
        str(out),
        "--disable-progress",
    ]
    assert bench.main(argv) == 0
    assert bench.main([*argv, "--request-rate", "50"]) == 0
    assert "Output token throughput (tok/s):" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for key in (
        "backend",
        "date",
        "target",
        "model",
        "dataset",
        "num_prompts",
        "request_rate",
        "max_concurrency",
        "completed",
        "failed",
        "duration_s",
        "request_throughput",
        "input_throughput",
        "output_throughput",
        "mean_ttft_ms",
        "median_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "median_tpot_ms",
        "p99_tpot_ms",
        "mean_itl_ms",
        "median_itl_ms",
        "p99_itl_ms",
        "mean_e2e_latency_ms",
        "cache_hit_rate",
        "total_input_tokens",
        "total_output_tokens",
    ):
        assert key in records[0], key
    assert records[0]["request_rate"] is None and records[1]["request_rate"] == 50
    assert [r["total_output_tokens"] for r in records] == [24, 24]
    assert [r["total_input_tokens"] for r in records] == [80, 80]


def test_max_concurrency_caps_requests_in_flight(target: str) -> None:
    """Client-side in-flight count and the server's running + waiting never exceed the cap."""
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            while not stop.is_set():
                stats = stub.GetServerStats(pb.GetServerStatsRequest())
                seen.append(stats.running + stats.waiting)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        config = bench.BenchConfig(
            "fixed", 8, fixed_input_len=16, fixed_output_len=24, max_concurrency=2, **QUIET
        )
        m, _ = bench.run_workload(target, config)
    finally:
        stop.set()
        poller.join()
    assert m.completed == 8 and m.max_in_flight == 2
    assert seen and max(seen) <= 2


def test_a_request_the_server_rejects_is_counted_as_failed(target: str) -> None:
    """A prompt longer than the context fails (INVALID_ARGUMENT); the others complete."""
    info = asyncio.run(bench.model_info(target))
    good = ds.fixed_requests(3, 10, 4, info.vocab_size, seed=1)
    too_long = ds.fixed_requests(1, info.max_context + 1, 4, info.vocab_size, seed=2)
    m = send(target, good + too_long, bench.BenchConfig(**QUIET)).summary()
    assert (m.completed, m.failed) == (3, 1)
    assert m.total_output_tokens == 12 and m.errors[0].startswith("INVALID_ARGUMENT")


def test_single_frame_requests_get_all_tokens_in_one_frame(target: str) -> None:
    config = bench.BenchConfig(
        "fixed", 3, fixed_input_len=12, fixed_output_len=9, single_frame=True, **QUIET
    )
    info = asyncio.run(bench.model_info(target))
    run = send(target, bench.make_requests(config, info.vocab_size), config)
    assert all(r.ok and r.output_tokens == 9 and not r.itls for r in run.results)
    assert all(r.ttft == r.latency for r in run.results)


def test_n_completions_count_as_requests_and_hit_the_prompt(target: str) -> None:
    """--n 4 over 3 prompts of 40 tokens: 12 completed results with every output token; the
    3 later completions of each prompt hit its 2 full blocks (hit rate 3 * 32 / (4 * 40));
    --repeat-prompts 4 sends the same 12 as single requests."""
    config = bench.BenchConfig(
        "fixed", 3, fixed_input_len=40, fixed_output_len=6, n=4, seed=3, **QUIET
    )
    m, info = bench.run_workload(target, config)
    assert (m.completed, m.failed, m.total_output_tokens) == (12, 0, 12 * 6)
    assert m.cache_hit_rate == pytest.approx(3 * 32 / (4 * 40))
    repeated = bench.BenchConfig(
        "fixed", 3, fixed_input_len=40, fixed_output_len=6, repeat_prompts=4, seed=4, **QUIET
    )
    requests = bench.make_requests(repeated, info.vocab_size)
    assert len(requests) == 12 and requests[0].prompt_ids == requests[3].prompt_ids
    m = send(target, requests, repeated).summary()
    assert (m.completed, m.total_output_tokens) == (12, 12 * 6)
    with pytest.raises(ValueError, match="--n is sent over yaie.v1"):
        bench.BenchConfig(n=2, backend="openai")


MULTI_TURN = bench.BenchConfig(
    "multi-turn",
    mt_num_conversations=2,
    mt_turns=4,
    mt_system_prompt_len=32,
    mt_question_len=16,
    mt_output_len=16,
    **QUIET,
)


def test_multi_turn_hit_rate_rises_with_the_turn_near_the_ideal(target: str) -> None:
    """Turn 1: nothing cached (each system prompt is new); turn k > 1: at least 0.8 of the
    block-granular ideal (the earlier turn's prompt and answer but its last token), never more."""
    m, info = bench.run_workload(target, MULTI_TURN)
    assert (m.completed, m.failed) == (8, 0)
    assert [t.mean_input_tokens for t in m.turns] == [48, 80, 112, 144]
    chat = bench.make_conversations(MULTI_TURN, info.vocab_size)[0]
    ideal = [
        ds.ideal_multi_turn_cached(chat, t, info.block_size) / chat.prompt_len(t) for t in (2, 3, 4)
    ]
    rates = [t.cache_hit_rate for t in m.turns]
    assert rates[0] == 0.0 and rates == sorted(rates)
    assert all(0.8 * i <= r <= i + 1e-9 for r, i in zip(rates[1:], ideal, strict=True)), rates


def test_multi_turn_without_the_prefix_cache_hits_nothing(model: Path, tools) -> None:
    with tools.running_stack(model, "--no-prefix-cache") as stack:
        m, _ = bench.run_workload(stack.target, MULTI_TURN)
    assert (m.completed, m.failed) == (8, 0)
    assert [t.cache_hit_rate for t in m.turns] == [0.0] * 4 and m.cached_tokens == 0

"""yaie bench's workloads and metrics without a server: lengths, seeds, arrivals, conventions."""

from __future__ import annotations

import math
import statistics

import pytest

from yaie.cli import bench
from yaie.cli.bench import datasets as ds
from yaie.cli.bench import flight, grpc_client
from yaie.cli.bench.metrics import RequestResult, format_table, percentile, summarize


def test_default_random_range_is_nano_vllms_100_to_1024() -> None:
    assert ds.length_range(1024, ds.NANO_VLLM_RANGE_RATIO) == (100, 1024)
    assert ds.length_range(4096, 0.0) == (1, 4096)  # SGLang CI's U[1, 4096]
    with pytest.raises(ValueError):
        ds.length_range(0, 0.5)


def test_random_requests_lengths_in_range_ids_in_vocab_and_seeded() -> None:
    requests = ds.random_requests(200, 64, 32, 0.25, vocab_size=50, seed=3)
    assert all(16 <= len(r.prompt_ids) <= 64 and 8 <= r.output_len <= 32 for r in requests)
    assert all(0 <= t < 50 for r in requests for t in r.prompt_ids)
    assert {len(r.prompt_ids) for r in requests} >= {16, 64}  # both ends are drawn
    assert requests == ds.random_requests(200, 64, 32, 0.25, vocab_size=50, seed=3)
    assert requests != ds.random_requests(200, 64, 32, 0.25, vocab_size=50, seed=4)


def test_shared_prefix_groups_share_exactly_the_system_prompt() -> None:
    requests = ds.shared_prefix_requests(3, 4, 20, 5, 7, vocab_size=1000, seed=0)
    assert len(requests) == 12 and all(len(r.prompt_ids) == 25 for r in requests)
    assert all(r.output_len == 7 for r in requests)
    systems = [tuple(r.prompt_ids[:20]) for r in requests]
    assert len(set(systems)) == 3 and systems[:4] == [systems[0]] * 4
    assert ds.ideal_cached_tokens(3, 4, 20, block_size=16) == 3 * 3 * 16


def test_poisson_gaps_have_mean_one_over_rate_and_inf_sends_at_once() -> None:
    gaps = flight.arrival_gaps(4000, request_rate=20.0, seed=1)
    assert statistics.fmean(gaps) == pytest.approx(1 / 20, rel=0.06)
    assert flight.arrival_gaps(5, math.inf, 1) == [0.0] * 5


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == 99.0
    assert math.isnan(percentile([], 99))


def test_itl_counts_each_frame_gap_once_and_tpot_spreads_over_tokens() -> None:
    """A request of 5 tokens in frames of 1, 3, 1: two ITL gaps; TPOT = (E2E - TTFT) / 4."""
    done = RequestResult(
        10,
        5,
        ok=True,
        ttft=0.1,
        latency=0.5,
        output_tokens=5,
        itls=[0.3, 0.1],
        prompt_tokens=10,
        cached_tokens=4,
    )
    failed = RequestResult(3, 2, error="INVALID_ARGUMENT: too long")
    m = summarize([done, failed], duration_s=2.0, max_in_flight=2, client_cpu_s=0.003)
    assert (m.completed, m.failed, m.total_output_tokens, m.total_input_tokens) == (1, 1, 5, 10)
    assert m.mean_itl_ms == pytest.approx(200.0) and m.median_tpot_ms == pytest.approx(100.0)
    assert m.cache_hit_rate == pytest.approx(0.4) and m.output_throughput == pytest.approx(2.5)
    assert m.num_frames == 3 and m.client_cpu_us_per_frame == pytest.approx(1000.0)
    assert m.errors == ["INVALID_ARGUMENT: too long"]
    assert "Successful requests:" in format_table(m) and "P99 ITL (ms):" in format_table(m)


def test_no_completed_request_gives_nan_stats_and_json_nulls() -> None:
    m = summarize([RequestResult(3, 2, error="x")], 1.0, 1, 0.0)
    assert m.completed == 0 and math.isnan(m.mean_ttft_ms)
    assert m.to_dict()["mean_ttft_ms"] is None
    format_table(m)  # renders NaN without raising


def test_config_rejects_unknown_dataset_and_bad_rate() -> None:
    with pytest.raises(ValueError):
        bench.BenchConfig(dataset="sharegpt")
    with pytest.raises(ValueError):
        bench.BenchConfig(request_rate=0.0)
    args = bench.build_parser().parse_args(["--dataset", "shared-prefix", "--gsp-num-groups", "2"])
    config = bench.config_from_args(args)
    assert config.gsp_num_groups == 2 and config.gsp_prompts_per_group == 16
    assert math.isinf(config.request_rate) and config.random_range_ratio == 100 / 1024


def test_datasets_with_the_same_seed_share_no_prefix() -> None:
    """Else the server's prefix cache would find one dataset's prompts in another's."""
    first = [
        ds.random_requests(1, 64, 4, 1.0, 4096, seed=0)[0].prompt_ids[:2],
        ds.shared_prefix_requests(1, 1, 64, 4, 4, 4096, seed=0)[0].prompt_ids[:2],
        ds.fixed_requests(1, 64, 4, 4096, seed=0)[0].prompt_ids[:2],
    ]
    assert len({tuple(ids) for ids in first}) == 3


def test_api_key_goes_out_as_a_bearer_authorization_header() -> None:
    assert grpc_client.call_metadata("k3y") == (("authorization", "Bearer k3y"),)
    assert grpc_client.call_metadata(None) is None and grpc_client.call_metadata("") is None
    args = bench.build_parser().parse_args(["--api-key", "abc"])
    assert args.api_key == "abc"

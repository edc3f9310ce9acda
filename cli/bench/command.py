"""`yaie bench`: the load generator, a workload sent to a running stack over gRPC.

Reports request/s, token throughput, TTFT / TPOT / ITL / E2E (mean, median, p99 in ms; the
conventions are in metrics.py) and the cache hit rate from the server's usage; a multi-turn run
(multi_turn.py) also TTFT and the hit rate per turn number.

Flag names follow SGLang's bench_serving and vLLM's benchmark_serving, so numbers compare.
run_workload(target, BenchConfig) -> (BenchMetrics, ModelInfo) is the importable entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from dataclasses import asdict, fields
from pathlib import Path
from typing import TextIO

import grpc
import httpx

from yaie.cli import arguments, client_security
from yaie.cli.bench import datasets as ds
from yaie.cli.bench import grpc_client as bench_grpc
from yaie.cli.bench import multi_turn
from yaie.cli.bench import openai_client as bench_openai
from yaie.cli.bench.flight import Flight, RunRecord, arrival_gaps
from yaie.cli.bench.metrics import BenchMetrics, RequestResult, format_table
from yaie.cli.bench.workload import (
    BACKENDS,
    DEFAULT_TARGETS,
    BenchConfig,
    describe_workload,
    make_conversations,
    make_requests,
)
from yaie.v1 import generation_pb2 as pb


async def model_info(
    target: str, api_key: str | None = None, tls: object = None, backend: str = "yaie"
) -> pb.ModelInfo:
    """The served model, asked through backend's API. tls: anything with tls_ca / tls_cert /
    tls_key attributes (client_security); None: plaintext."""
    if backend == "openai":
        return await bench_openai.model_info(target, api_key, tls)
    return await bench_grpc.model_info(target, api_key, tls)


async def send_requests(
    target: str,
    requests: list[ds.BenchRequest],
    config: BenchConfig,
    api_key: str | None = None,
    timeout_s: float | None = None,
    tls: object = None,
) -> RunRecord:
    """Sends requests over one channel as config says (Poisson rate and/or concurrency cap).
    After timeout_s the requests still in flight or unsent are cancelled and count as failed."""
    tag = uuid.uuid4().hex[:8]
    if config.backend == "openai":
        session = bench_openai.session
        messages = [
            bench_openai.encoded_payload(r, config.temperature, config.json_schema)
            for r in requests
        ]
    else:
        session = bench_grpc.session
        messages = [
            bench_grpc.to_proto(
                r,
                f"bench-{tag}-{i}",
                config.temperature,
                config.single_frame,
                config.json_schema,
                config.n,
            )
            for i, r in enumerate(requests)
        ]
    # per request, one result per completion
    calls = [
        [RequestResult(len(r.prompt_ids), r.output_len) for _ in range(config.n)] for r in requests
    ]
    results = [result for call_results in calls for result in call_results]
    gaps = arrival_gaps(len(requests), config.request_rate, config.seed)
    flight = Flight(config.max_concurrency, len(requests), not config.disable_progress)

    async with session(target, api_key, tls) as call:

        async def send_all() -> None:
            tasks = []
            for message, call_results, gap in zip(messages, calls, gaps, strict=True):
                if gap:
                    await asyncio.sleep(gap)
                tasks.append(asyncio.create_task(flight.send(call, message, call_results)))
            await asyncio.gather(*tasks)

        return await flight.run(send_all(), results, timeout_s)


def run_workload(
    target: str,
    config: BenchConfig,
    api_key: str | None = None,
    timeout_s: float | None = None,
    tls: object = None,
    announce: TextIO | None = None,
) -> tuple[BenchMetrics, pb.ModelInfo]:
    """The whole run: asks the server for its vocabulary, builds the workload (described on
    announce, when given), sends it."""

    async def run() -> tuple[BenchMetrics, pb.ModelInfo]:
        info = await model_info(target, api_key, tls, config.backend)
        if config.dataset == "multi-turn":
            conversations = make_conversations(config, info.vocab_size)
            multi_turn.check_context(conversations, info.max_context)
            drawn = multi_turn.describe(conversations)
            sending = multi_turn.send_conversations(
                target, conversations, config, api_key, timeout_s, tls
            )
        else:
            requests = make_requests(config, info.vocab_size)
            drawn = ds.describe(requests)
            sending = send_requests(target, requests, config, api_key, timeout_s, tls)
        if announce is not None:
            print(describe_workload(config, drawn), file=announce, flush=True)
        return (await sending).summary(), info

    return asyncio.run(run())


def record(
    metrics: BenchMetrics, config: BenchConfig, target: str, info: pb.ModelInfo | None
) -> dict:
    """The JSON object of one run (--output-file): config, server and metrics side by side."""
    settings = {
        k: (None if isinstance(v, float) and math.isinf(v) else v)
        for k, v in asdict(config).items()
    }
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target,
        "model": info.model if info else "",
        "architecture": info.architecture if info else "",
        "dtype": info.dtype if info else "",
        **settings,
        **metrics.to_dict(),
    }


# The workload's whole-number flags: BenchConfig field -> help (each flag is --field-name).
_WORKLOAD_SIZES = {
    "num_prompts": "requests of a random or fixed workload",
    "random_input_len": "most prompt tokens of a random request",
    "random_output_len": "most output tokens of a random request",
    "gsp_num_groups": "shared-prefix: groups (one system prompt each)",
    "gsp_prompts_per_group": "shared-prefix: prompts per group",
    "gsp_system_prompt_len": "shared-prefix: tokens of a system prompt",
    "gsp_question_len": "shared-prefix: tokens of a question",
    "gsp_output_len": "shared-prefix: output tokens per request",
    "fixed_input_len": "fixed: prompt tokens per request",
    "fixed_output_len": "fixed: output tokens per request",
    "mt_num_conversations": "multi-turn: conversations (each its own system prompt)",
    "mt_turns": "multi-turn: turns per conversation",
    "mt_system_prompt_len": "multi-turn: tokens of a system prompt",
    "mt_question_len": "multi-turn: tokens of each turn's new question",
    "mt_output_len": "multi-turn: output tokens per turn (the answer, appended to the history)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yaie bench",
        description=__doc__.splitlines()[0],
        formatter_class=arguments.DefaultsFormatter,
    )
    d = BenchConfig()
    p.add_argument(
        "--backend",
        default=d.backend,
        choices=BACKENDS,
        help="yaie: the yaie.v1 gRPC API; openai: the OpenAI-compatible HTTP API (--http-port)",
    )
    p.add_argument(
        "--target",
        default=None,
        help="scheduler HOST:PORT, or http://HOST:PORT for --backend openai "
        f"(default: {DEFAULT_TARGETS['yaie']} or {DEFAULT_TARGETS['openai']})",
    )
    p.add_argument("--dataset", default=d.dataset, choices=ds.DATASETS, help="the workload")
    for name, help_ in _WORKLOAD_SIZES.items():
        flag = f"--{name.replace('_', '-')}"
        p.add_argument(flag, type=int, default=getattr(d, name), help=help_)
    p.add_argument(
        "--random-range-ratio",
        type=float,
        default=d.random_range_ratio,
        help="lengths uniform in [max(1, int(len * ratio)), len] (default: "
        f"{d.random_range_ratio:.4f} = 100/1024, nano-vllm's [100, 1024]; "
        "1: exactly len)",
    )
    p.add_argument(
        "--request-rate",
        type=float,
        default=d.request_rate,
        help="requests/s with Poisson arrivals (multi-turn: conversations started per s; "
        "default inf: all at once)",
    )
    p.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    p.add_argument("--seed", type=int, default=d.seed, help="of the workload's random draws")
    p.add_argument("--output-file", default=None, help="append one JSON object per run")
    p.add_argument(
        "--api-key",
        default=None,
        help="authorization: Bearer KEY (visible to other users in the process "
        "list: prefer --api-key-file or $YAIE_API_KEY)",
    )
    client_security.add_arguments(p)  # --api-key-file, --tls-ca, --tls-cert, --tls-key
    p.add_argument("--disable-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--json-schema",
        metavar="FILE",
        default=None,
        help="structured output: constrain every output by this JSON schema",
    )
    p.add_argument(
        "--n",
        type=int,
        default=d.n,
        help="completions per request (GenerateRequest.n: the prompt computed once); each "
        "counts as a request in the metrics",
    )
    p.add_argument(
        "--repeat-prompts",
        type=int,
        default=d.repeat_prompts,
        help="send each prompt this many times as separate requests (the baseline of --n)",
    )
    p.add_argument(
        "--single-frame",
        action="store_true",
        help="diagnostic: one frame per request (no TTFT/ITL; shows the cost of "
        "streaming a frame per step)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    values = {f.name: getattr(args, f.name) for f in fields(BenchConfig) if f.name != "json_schema"}
    schema = Path(args.json_schema).read_text(encoding="utf-8") if args.json_schema else None
    return BenchConfig(**values, json_schema=schema)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        key = args.api_key or client_security.api_key(args.api_key_file)
        target = args.target or DEFAULT_TARGETS[config.backend]
        metrics, info = run_workload(target, config, key, tls=args, announce=sys.stderr)
    except grpc.aio.AioRpcError as error:
        print(f"yaie bench: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"yaie bench: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:  # an unreadable key or TLS file; a workload
        print(f"yaie bench: {error}", file=sys.stderr)  # longer than the model's context
        return 1
    except KeyboardInterrupt:
        return 130
    print(format_table(metrics, f"{config.dataset} on {info.model or target}"))
    if args.output_file:
        with open(args.output_file, "a", encoding="utf-8") as out:
            out.write(json.dumps(record(metrics, config, target, info)) + "\n")
    return 0 if metrics.failed == 0 else 1

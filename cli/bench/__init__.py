"""`yaie bench`: the load generator. command.py reads the flags and runs a workload (workload.py:
its config, and its requests drawn by datasets.py) through one of the two API clients
(grpc_client.py: yaie.v1; openai_client.py: the HTTP API), paced by flight.py (multi_turn.py
sends the conversations of a multi-turn one), and metrics.py turns the per-request timings into
the field's numbers."""

from yaie.cli.bench.command import (
    BACKENDS,
    BenchConfig,
    build_parser,
    config_from_args,
    main,
    make_conversations,
    make_requests,
    model_info,
    run_workload,
    send_requests,
)

__all__ = [
    "BACKENDS",
    "BenchConfig",
    "build_parser",
    "config_from_args",
    "main",
    "make_conversations",
    "make_requests",
    "model_info",
    "run_workload",
    "send_requests",
]

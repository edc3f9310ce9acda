"""The scheduler's command-line flags, each declared once, in option groups.

`yaie scheduler`, `yaie serve` and `yaie in-process` add the groups they take to their parsers;
engine_config() and server_options() turn the parsed flags into the configs (ValueError on a bad
value, combination or file). The worker's own flags are worker_service/__main__.py's.
"""

from __future__ import annotations

import argparse

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.ops.auth import KeyTable
from yaie.scheduler_service.ops.channel_security import WorkerChannelSecurity, server_credentials
from yaie.scheduler_service.ops.server_options import HttpTls, ServerOptions
from yaie.scheduler_service.ops.tenants import API_KEY_ENV, TenantDefaults

# flag -> (SchedulerConfig field, help): the batching knobs taken as they are (whole numbers)
_BATCHING_FLAGS: dict[str, tuple[str, str]] = {
    "--max-queue": (
        "max_queue_size",
        "waiting requests beyond which Generate answers RESOURCE_EXHAUSTED",
    ),
    "--max-running-requests": ("max_running_requests", "per worker"),
    "--max-num-batched-tokens": ("max_num_batched_tokens", "tokens per step"),
    "--stream-interval": (
        "stream_interval",
        "under load (>= 64 running), one frame per this many tokens per request",
    ),
    "--max-stream-backlog": (
        "max_stream_backlog",
        "tokens a request's client may leave unread before the request is paused",
    ),
    "--overlap-depth": (
        "overlap_depth",
        "plans sent ahead of the oldest unread step result (1 with --jump-forward)",
    ),
    "--admission-wave": (
        "admission_wave",
        "under a full batch, admit waiting requests this many at a time (or once the first "
        "waited this many steps); 1 (default): as soon as a slot frees",
    ),
}
# ... and the failure and drain timeouts, in seconds
_FAILOVER_FLAGS: dict[str, tuple[str, str]] = {
    "--step-timeout": (
        "step_timeout_s",
        "seconds a worker may take for a step result (or a health answer, at most 10 s) before "
        "it counts as lost (hung); its requests then finish on the other workers",
    ),
    "--health-interval": ("health_check_interval_s", "seconds between worker health checks"),
    "--no-worker-timeout": (
        "no_worker_timeout_s",
        "with no worker left, seconds requests wait for one before they fail UNAVAILABLE",
    ),
    "--drain-timeout": (
        "drain_timeout_s",
        "on SIGTERM, seconds streams in flight may still run before they are cancelled",
    ),
}


def add_worker_arguments(parser: argparse.ArgumentParser, required: bool, help: str) -> None:
    """--worker HOST:PORT (repeatable; help: what the command does with it) and --worker-wait."""
    parser.add_argument(
        "--worker",
        action="append",
        required=required,
        default=None if required else [],
        metavar="HOST:PORT",
        help=help,
    )
    parser.add_argument(
        "--worker-wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the workers to load their model",
    )


def add_scheduler_arguments(
    parser: argparse.ArgumentParser,
    model_help: str,
    log_level: tuple[str | None, str] = ("INFO", ""),
) -> None:
    """Every scheduler flag but the workers': its address, --model (model_help: what the command
    loads from it), batching, worker failures, security, metrics and logs (log_level: the
    --log-level default, and a note for its help where the command resolves a None itself)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=50051, help="port to listen on (0: any free)")
    parser.add_argument("--model", default=None, help=model_help)
    _add_batching(parser.add_argument_group("batching"))
    _add_failover(parser.add_argument_group("worker failures and draining"))
    _add_discovery(parser.add_argument_group("workers that join and leave (scale out)"))
    _add_public_security(parser.add_argument_group("public API security"))
    _add_worker_security(parser.add_argument_group("worker channel security"))
    _add_http(parser.add_argument_group("OpenAI-compatible HTTP API"))
    _add_observability(parser.add_argument_group("metrics and logs"), *log_level)


def engine_config(args: argparse.Namespace) -> SchedulerConfig:
    """The engine's config from the batching and failover flags."""
    tables = (_BATCHING_FLAGS | _FAILOVER_FLAGS).items()
    values = {name: getattr(args, _dest(flag)) for flag, (name, _) in tables}
    budget = values["max_num_batched_tokens"]
    return SchedulerConfig(
        prefill_chunk_size=min(args.prefill_chunk_size or budget, budget),
        enable_overlap=not args.no_overlap,
        enable_prefix_cache=not args.no_prefix_cache,
        enable_jump_forward=args.jump_forward,
        **values,
    )


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The security and metrics flags resolved (key and certificate files read)."""
    defaults = TenantDefaults(args.tenant_max_concurrent, args.tenant_max_queued)
    keys = KeyTable(args.api_key_file, defaults)
    if defaults != TenantDefaults() and not keys.required:
        raise ValueError(f"--tenant-max-* need API keys (--api-key-file or ${API_KEY_ENV})")
    return ServerOptions(
        keys=keys,
        credentials=server_credentials(args.tls_cert, args.tls_key, args.tls_ca),
        workers=WorkerChannelSecurity.from_files(
            args.internal_secret_file, args.worker_tls_ca, args.worker_tls_cert, args.worker_tls_key
        ),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        http_port=args.http_port,
        http_host=args.http_host,
        http_tls=HttpTls(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None,
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits through parser.error (status 2) when the scheduler flags do not resolve."""
    try:
        engine_config(args)
        server_options(args)
    except ValueError as error:
        parser.error(str(error))
    if not args.dns_interval > 0 or not args.forget_lost_worker > 0:
        parser.error("--dns-interval and --forget-lost-worker must be > 0")
    for name in args.worker_dns:
        host, _, port = name.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"--worker-dns must be NAME:PORT, got {name!r}")


def _add_batching(group: argparse._ArgumentGroup) -> None:
    _add_table(group, _BATCHING_FLAGS, int, None)
    group.add_argument(
        "--prefill-chunk-size",
        type=int,
        default=None,
        help="prompt tokens per request per step (default: the step budget)",
    )
    group.add_argument("--no-overlap", action="store_true", help="wait for each step's result")
    group.add_argument("--no-prefix-cache", action="store_true", help="never share KV blocks")
    group.add_argument(
        "--jump-forward",
        action="store_true",
        help="structured output: append the tokens a grammar forces without a decode step "
        "each (faster on the CPU, slower on a GPU today: see benchmarks/NOTES.md)",
    )


def _add_failover(group: argparse._ArgumentGroup) -> None:
    _add_table(group, _FAILOVER_FLAGS, float, "SECONDS")


def _add_table(
    group: argparse._ArgumentGroup,
    table: dict[str, tuple[str, str]],
    type: type,
    metavar: str | None,
) -> None:
    """The flags of table, their defaults SchedulerConfig's."""
    for flag, (name, help_) in table.items():
        default = getattr(SchedulerConfig, name)
        help_ = f"{help_} (default {default:g})"
        group.add_argument(flag, type=type, default=default, metavar=metavar, help=help_)


def _add_discovery(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--internal-port",
        type=int,
        default=None,
        help="accept worker joins (`yaie worker --join HOST:PORT`) on this port, checked by "
        "--internal-secret-file or worker mTLS (default: off; 0: any free port)",
    )
    group.add_argument(
        "--internal-host",
        default="127.0.0.1",
        help="address of --internal-port; a non-loopback one needs a secret or mTLS",
    )
    group.add_argument(
        "--insecure-internal",
        action="store_true",
        help="let --internal-host be non-loopback with no secret nor mTLS (anyone who reaches "
        "it can add a worker and read prompts)",
    )
    group.add_argument(
        "--worker-dns",
        action="append",
        default=[],
        metavar="NAME:PORT",
        help="follow the workers at NAME's addresses (a headless Service), re-resolved every "
        "--dns-interval seconds (repeatable)",
    )
    group.add_argument(
        "--dns-interval", type=float, default=5.0, metavar="SECONDS", help="(default 5)"
    )
    group.add_argument(
        "--forget-lost-worker",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a joined worker lost this long leaves the set (it joins again when back; default 30)",
    )


def discovery_enabled(args: argparse.Namespace) -> bool:
    """Whether workers may arrive after start (joins or DNS)."""
    return args.internal_port is not None or bool(args.worker_dns)


def _add_public_security(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--api-key-file",
        default=None,
        help="file of API keys clients must send: one bare key, or lines `TENANT: KEY [admin] "
        "[max_concurrent=N] [max_queued=N]` (re-read on SIGHUP; README: Tenants) "
        f"(default: ${API_KEY_ENV}; neither: no key needed)",
    )
    for limit, what in (("concurrent", "live (queued + running)"), ("queued", "queued")):
        group.add_argument(
            f"--tenant-max-{limit}",
            type=int,
            default=None,
            metavar="N",
            help=f"{what} requests a tenant may have before Generate answers "
            "RESOURCE_EXHAUSTED, for tenants whose key line sets none (default: no limit)",
        )
    group.add_argument("--tls-cert", default=None, help="PEM certificate (enables TLS)")
    group.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    group.add_argument(
        "--tls-ca", default=None, help="PEM CA that client certificates must chain to (mTLS)"
    )


def _add_http(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="serve the OpenAI-compatible API (/v1/chat/completions, /v1/completions, "
        "/v1/models, /health, /metrics) on this port, with the gRPC API's key and TLS "
        "(default: off; 0: any free port)",
    )
    group.add_argument("--http-host", default="127.0.0.1", help="HTTP API address")


def _add_worker_security(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--internal-secret-file", default=None, help="file holding the secret the workers check"
    )
    group.add_argument(
        "--worker-tls-ca", default=None, help="PEM CA of the workers' certificates (enables TLS)"
    )
    group.add_argument("--worker-tls-cert", default=None, help="client certificate (mTLS)")
    group.add_argument("--worker-tls-key", default=None, help="client key (mTLS)")


def _add_observability(
    group: argparse._ArgumentGroup, log_level_default: str | None, log_level_note: str
) -> None:
    group.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at /metrics (default: off)",
    )
    group.add_argument("--metrics-host", default="127.0.0.1", help="metrics address")
    group.add_argument(
        "--log-level",
        default=log_level_default,
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help=f"how much the processes log, to stderr{log_level_note}",
    )
    group.add_argument("--log-format", default="text", choices=["text", "json"])


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")

"""Command-line flags for worker failures and draining (`yaie scheduler` and `yaie serve`)."""

from __future__ import annotations

import argparse

from yaie.scheduler_service.config import SchedulerConfig

# flag -> (SchedulerConfig field, help)
_FLAGS: dict[str, tuple[str, str]] = {
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("worker failures and draining")
    for flag, (name, help_) in _FLAGS.items():
        default = getattr(SchedulerConfig, name)
        group.add_argument(flag, type=float, default=default, metavar="SECONDS",
                           help=f"{help_} (default {default:g})")  # fmt: skip


def config_kwargs(args: argparse.Namespace) -> dict[str, float]:
    """SchedulerConfig keyword arguments from the parsed flags."""
    return {name: getattr(args, _dest(flag)) for flag, (name, _) in _FLAGS.items()}


def forward(args: argparse.Namespace) -> list[str]:
    """The flags again, for a scheduler command line built from args."""
    argv: list[str] = []
    for flag in _FLAGS:
        argv += [flag, repr(float(getattr(args, _dest(flag))))]
    return argv


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")

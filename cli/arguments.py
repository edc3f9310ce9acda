"""Flags and help formatting that several `yaie` commands share: defaults shown in --help, the
log level, and the sampling flags (each saying what the server does when it is left out)."""

from __future__ import annotations

import argparse

from yaie.v1 import generation_pb2 as pb

# flag name -> (type, what the server uses when the request leaves it unset)
SAMPLING: dict[str, tuple[type, str]] = {
    "temperature": (float, "1.0; 0 = greedy"),
    "top_p": (float, "1.0"),
    "top_k": (int, "0 = off"),
    "min_p": (float, "0.0"),
    "repetition_penalty": (float, "1.0"),
    "frequency_penalty": (float, "0.0"),
    "presence_penalty": (float, "0.0"),
    "seed": (int, "a random seed per request"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help, except where there is nothing to say (None,
    False, an empty list) or the help already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in help_.lower():
            return help_
        return super()._get_help_string(action)


def add_log_level(
    parser: argparse.ArgumentParser, default: str | None = "INFO", note: str = ""
) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"how much the processes log, to stderr{note}",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (unset: the server's default, shown)")
    for name, (kind, server_default) in SAMPLING.items():
        group.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=None,
            help=f"server default: {server_default}",
        )


def fill_sampling(args: argparse.Namespace, sampling: pb.SamplingParams) -> None:
    """Sets the sampling fields that the flags set (the others stay unset: server defaults)."""
    for name in SAMPLING:
        value = getattr(args, name)
        if value is not None:
            setattr(sampling, name, value)

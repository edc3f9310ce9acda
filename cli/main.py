"""The `yaie` command: one console script over the scheduler, the worker and the client tools.

Each subcommand lives in its own module with `main(argv) -> int`, imported only when chosen, so
`yaie generate` never loads torch and the CLI sits above both services.
"""

from __future__ import annotations

import importlib
import signal
import sys

# subcommand -> (module with main(argv) -> int, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("yaie.cli.serve", "run the scheduler and N local workers: the one-command stack"),
    "scheduler": (
        "yaie.scheduler_service.__main__",
        "run the scheduler alone (--worker HOST:PORT)",
    ),
    "worker": ("yaie.worker_service.__main__", "run one GPU worker alone (--model M --port P)"),
    "generate": ("yaie.cli.generate", "stream a generation from a running stack to the terminal"),
    "chat": ("yaie.cli.chat", "chat with a running stack in the terminal (history kept)"),
    "bench": ("yaie.cli.bench", "drive a running stack with a benchmark workload"),
    "in-process": (
        "yaie.cli.in_process",
        "the scheduler and one worker in this one process (no gRPC between them)",
    ),
}


def usage() -> str:
    lines = ["usage: yaie <command> [options]   (yaie <command> --help for its options)", ""]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "  --version  print the installed version"]
    return "\n".join(lines)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("mini-yaie")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"yaie {version()}")
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"yaie: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"yaie {command}: not available in this installation", file=sys.stderr)
        return 2
    status = int(module.main(rest) or 0)
    if argv is None:  # run as the program (not called from other code): it exits next
        ignore_signals_while_exiting()
    return status


def ignore_signals_while_exiting() -> None:
    """The command has stopped what it ran: interpreter shutdown would put SIG_DFL back for
    Python-level handlers (not for SIG_IGN), and a repeated SIGTERM in that last window would
    turn a clean exit into death by signal."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())

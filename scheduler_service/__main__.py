"""`yaie scheduler` (or `python -m yaie.scheduler_service`): the scheduler process alone, over
workers that run elsewhere: given (--worker HOST:PORT, repeatable, as docker-compose runs it),
joining its --internal-port (`yaie worker --join`), or found by DNS (--worker-dns NAME:PORT).

It serves yaie.v1.Generation, grpc.health.v1 (SERVING once every given worker is ready, and
while some worker is) and server reflection; SIGTERM or Ctrl-C stops it cleanly (app.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from yaie.scheduler_service.app import serve
from yaie.scheduler_service.ops import flags
from yaie.scheduler_service.ops.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yaie scheduler", description=__doc__)
    worker_help = "a worker's address (repeat for several workers)"
    flags.add_worker_arguments(parser, required=False, help=worker_help)
    model_help = "tokenizer directory or hub id (default: the model the workers serve)"
    flags.add_scheduler_arguments(parser, model_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags.check(parser, args)
    if not args.worker and not flags.discovery_enabled(args):
        parser.error("give workers: --worker HOST:PORT, --internal-port or --worker-dns")
    setup_logging(args.log_level, args.log_format)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    status = main()
    for signum in (signal.SIGTERM, signal.SIGINT):  # stopped: interpreter shutdown would put
        signal.signal(signum, signal.SIG_IGN)  # SIG_DFL back, and a repeat would then kill us
    sys.exit(status)

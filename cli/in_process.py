"""The worker inside the scheduler's process: InProcessWorkerClient drives a loaded WorkerServicer's
Step generator on a thread (protobuf plans and results through queues: no serialization, no
network), and `yaie in-process` serves the public API over it, to measure what the split costs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import queue
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

import grpc

from yaie.cli import stop_signals
from yaie.cli.models.model_choice import ModelUnavailable, served_model
from yaie.scheduler_service.workers.step_plan import StepOutcome, StepPlan, WorkerDescription
from yaie.scheduler_service.workers.worker_client import (
    WorkerStreamError,
    decode_result,
    describe_info,
    encode_plan,
    read_within,
)
from yaie.worker.v1 import worker_pb2

if TYPE_CHECKING:  # torch is imported only by main(), once the flags are checked
    from yaie.worker_service.server import WorkerServicer

logger = logging.getLogger("yaie.in_process")
ADDRESS = "in-process"  # the worker's "address" in logs, stats and errors
_CLOSE = object()  # ends the plan iterator the servicer reads (the call is over)
_EOF = object()  # the servicer's Step generator returned
_CANCELLED = object()  # the client abandoned the call


class _StepContext:
    """What WorkerServicer.Step uses of a grpc.ServicerContext."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()

    def is_active(self) -> bool:
        return not self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise WorkerStreamError(f"{code.name}: {details}")

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        # The worker serves this process's engine only: no scheduler id to tell apart.
        return ()


class _StepCall:
    """One Step stream: a thread runs servicer.Step over a plan queue and hands each result to
    the event loop's queue (then _EOF, or the exception the generator raised)."""

    def __init__(self, servicer: WorkerServicer, loop: asyncio.AbstractEventLoop) -> None:
        self.plans: queue.SimpleQueue = queue.SimpleQueue()
        self.results: asyncio.Queue = asyncio.Queue()
        self.context = _StepContext()
        self._loop = loop
        self.thread = threading.Thread(
            target=self._run, args=(servicer,), daemon=True, name="in-process-step"
        )
        self.thread.start()

    def _run(self, servicer: WorkerServicer) -> None:
        results = servicer.Step(iter(self.plans.get, _CLOSE), self.context)
        end: object = _EOF
        try:
            for result in results:
                if not self.context.is_active():
                    break
                self._deliver(result)
        except Exception as exc:  # the servicer aborted the call (e.g. no model loaded)
            end = exc
        finally:
            # As gRPC does with a cancelled call's response iterator: its finally drops the
            # stream's requests (runner.close_table).
            results.close()
        self._deliver(end)

    def _deliver(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self.results.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads this call any more
            pass

    def cancel(self) -> None:
        """On the event loop's thread: a read in progress fails, the servicer stops taking
        plans (context inactive; a reader waiting for one gets the end of the stream)."""
        self.context.cancel()
        self.plans.put(_CLOSE)
        self.results.put_nowait(_CANCELLED)


class InProcessWorkerClient:
    """scheduler_service.workers.worker_client.WorkerClient's interface and semantics over a loaded
    WorkerServicer of this process. Use it from one event loop (as the engine does)."""

    def __init__(self, servicer: WorkerServicer, address: str = ADDRESS) -> None:
        self.address = address
        self._servicer = servicer
        self._call: _StepCall | None = None

    async def describe(self, timeout: float) -> WorkerDescription:
        info = self._servicer.info
        if info is None:
            raise WorkerStreamError(f"{self.address}: the worker is still loading its model")
        return describe_info(self.address, info)

    def open_stream(self) -> None:
        """A new Step stream (the servicer starts a fresh request table for it)."""
        self.abandon_stream()
        self._call = _StepCall(self._servicer, asyncio.get_running_loop())

    def abandon_stream(self) -> None:
        """As a cancelled gRPC call: the worker drops the stream's requests; a read in progress
        fails with WorkerStreamError."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def health(self, timeout: float) -> str:
        if self._servicer.info is None or self._servicer.device_failed.is_set():
            return "NOT_SERVING"
        return "SERVING"

    async def send(self, plan: StepPlan) -> None:
        call = self._live_call()
        if not call.thread.is_alive():
            step = plan.step_id
            raise WorkerStreamError(f"sending step {step} to {self.address}: the stream ended")
        call.plans.put(encode_plan(plan))

    async def receive(self, plan: StepPlan, timeout: float) -> StepOutcome:
        """The next StepResult, decoded against the entries of its plan."""
        call = self._live_call()
        item = (await read_within(call.results.get(), timeout, self.address)).result()
        if isinstance(item, worker_pb2.StepResult):
            return decode_result(item, plan)
        call.results.put_nowait(item)  # the end stays: later reads see it too
        if item is _CANCELLED:
            raise WorkerStreamError(f"{self.address}: the step stream was cancelled")
        if item is _EOF:
            raise WorkerStreamError(f"{self.address}: the worker closed the step stream")
        raise WorkerStreamError(f"{self.address}: step stream failed: {item}") from item

    async def close(self) -> None:
        self.abandon_stream()

    def _live_call(self) -> _StepCall:
        if self._call is None:
            raise WorkerStreamError(f"{self.address}: the step stream was abandoned")
        return self._call


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(scheduler flags, worker flags): the scheduler's flags (ops/flags.py: --host, --port,
    --model, ...) first, `yaie worker`'s parser takes the rest (--device, --dtype, ...)."""
    from yaie.scheduler_service.ops import flags
    from yaie.worker_service.__main__ import build_parser as worker_parser

    own = argparse.ArgumentParser(prog="yaie in-process", add_help=False)
    own.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="the GIL switch interval (default: Python's, 5 ms)",
    )
    own.add_argument(
        "--revision", default=None, help="branch, tag or commit of a hub --model (default: main)"
    )
    own_args, argv = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    schedulers = argparse.ArgumentParser(prog="yaie in-process")
    flags.add_worker_arguments(schedulers, required=False, help=argparse.SUPPRESS)
    model_help = (
        "Hugging Face model directory or cached hub id, for the worker and the tokenizer "
        "(default: the built-in random-weight model)"
    )
    flags.add_scheduler_arguments(schedulers, model_help)
    workers = worker_parser()
    workers.prog = "yaie in-process"
    if {"-h", "--help"} & set(argv):
        print(
            f"{__doc__}\n{own.format_help()}\nScheduler flags (no --worker: it runs here):\n"
            f"{schedulers.format_help()}\nWorker flags (not --host/--port/--tp/security):\n"
            f"{workers.format_help()}"
        )
        raise SystemExit(0)
    scheduler_args, rest = schedulers.parse_known_args(argv)
    scheduler_args.switch_interval_ms = own_args.switch_interval_ms
    if scheduler_args.worker:
        schedulers.error("--worker: the worker runs in this process")
    scheduler_args.worker = [ADDRESS]
    try:  # the built-in model without --model; a hub id resolved (downloaded) once
        scheduler_args.model = served_model(scheduler_args.model, own_args.revision)
    except ModelUnavailable as error:
        print(f"yaie in-process: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    worker_args = workers.parse_args([*rest, "--model", scheduler_args.model, "--port", "0"])
    if worker_args.tp != 1:
        workers.error("--tp: tensor parallelism needs worker processes (yaie serve --tp)")
    return scheduler_args, worker_args


async def _serve(args: argparse.Namespace, servicer: WorkerServicer) -> int:
    """The scheduler's serve() over the in-process worker; a device failure stops it (1)."""
    from yaie.scheduler_service.app import serve

    stop = asyncio.Event()

    async def watch_device() -> None:
        while not servicer.device_failed.is_set():
            await asyncio.sleep(0.2)
        logger.critical("device failure: stopping")
        stop.set()

    watch = asyncio.create_task(watch_device())
    noted = asyncio.create_task(stop_signals.stopping_once(stop))
    status = await serve(args, stop, lambda address: InProcessWorkerClient(servicer, address))
    stop_signals.stopping()
    watch.cancel()
    noted.cancel()
    return 1 if servicer.device_failed.is_set() else status


def main(argv: list[str] | None = None) -> int:
    from yaie.scheduler_service.ops import flags
    from yaie.scheduler_service.ops.logs import setup_logging
    from yaie.worker_service.__main__ import config_from_args

    scheduler_args, worker_args = parse_args(argv)
    setup_logging(scheduler_args.log_level, scheduler_args.log_format)
    try:
        flags.engine_config(scheduler_args)
        flags.server_options(scheduler_args)
        config = config_from_args(worker_args)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    if scheduler_args.switch_interval_ms is not None:  # a diagnostic of the GIL's share
        sys.setswitchinterval(scheduler_args.switch_interval_ms / 1e3)
    stop_signals.install()  # until serve() installs its own: SystemExit(128 + signal)
    from yaie.worker_service.app import build_runner
    from yaie.worker_service.server import WorkerServicer
    from yaie.worker_service.step.compute_thread import ComputeThread

    try:
        servicer = WorkerServicer(ComputeThread.for_device(config.torch_device()))
        servicer.load(*servicer.compute.call(build_runner, config))
    except (OSError, ValueError) as error:  # no such model, unsupported config
        logger.error("cannot load the worker: %s", error)
        return 1
    return asyncio.run(_serve(scheduler_args, servicer))


if __name__ == "__main__":
    sys.exit(main())

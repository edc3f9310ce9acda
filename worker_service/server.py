"""The worker's gRPC servicer (yaie.worker.v1.Worker): each RPC decodes (wire.py), calls the
runner, encodes.

Step reads plans on a helper thread so that plan N+1 can be launched while step N computes on
the GPU, and another helper says when the oldest launched step is done, so the loop that waits for
plans hands back each result as soon as it exists without holding up a plan that arrives first;
results still go back strictly in step order. On the CPU a launch is the computation
itself, so each result goes back as soon as its step is done, and all torch work runs on one
compute thread (step/compute_thread.py says why).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator

import grpc
import torch

from yaie.worker.v1 import worker_pb2, worker_pb2_grpc
from yaie.worker_service.protocol import StepOutput
from yaie.worker_service.step.compute_thread import ComputeThread
from yaie.worker_service.step.request_state import RequestTable
from yaie.worker_service.step.runner import MAX_IN_FLIGHT, ModelRunner
from yaie.worker_service.step.sampling_step import PendingStep
from yaie.worker_service.wire import BadPlan, plan_from_proto, result_to_proto

log = logging.getLogger(__name__)

_END = object()  # the client closed its side of the stream
_READY = object()  # the oldest launched step is done on the device (_ReadyWatch)
# The Step call's metadata naming its scheduler process (scheduler_service/workers/
# worker_client.py sends it; same name). The pool's blocks belong to one allocator at a time.
SCHEDULER_ID_METADATA_KEY = "yaie-scheduler-id"


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    """Describe and Step over one loaded model; UNAVAILABLE until load() is done."""

    def __init__(self, compute: ComputeThread | None = None) -> None:
        self.compute = compute or ComputeThread(threaded=False)  # runs the runner's torch work
        self.runner: ModelRunner | None = None
        self.info: worker_pb2.WorkerInfo | None = None
        self.device_failed = threading.Event()  # the process must exit: the device is unusable
        self._lock = threading.Lock()  # one launch at a time across streams
        self._open_streams = 0
        self._owner = ""  # the scheduler id of the open streams (while any is open)
        self._streams_changed = threading.Condition()
        self._tables: set[RequestTable] = set()  # of the open streams (for tests and stats)

    def live_tables(self) -> list[RequestTable]:
        """The request tables of the open Step streams."""
        return list(self._tables)

    def wait_streams_closed(self, timeout_s: float) -> bool:
        """Waits until every Step stream has closed its table (after the server stopped, so that
        a tensor-parallel group is stopped only once no CLOSE is left to send to it)."""
        with self._streams_changed:
            return self._streams_changed.wait_for(lambda: self._open_streams == 0, timeout_s)

    def _count_stream(self, delta: int) -> None:
        with self._streams_changed:
            self._open_streams += delta
            self._streams_changed.notify_all()

    def _claim(self, scheduler_id: str) -> str | None:
        """Counts a new stream of scheduler_id; the owner's id instead when streams of another
        scheduler are open (nothing counted)."""
        with self._streams_changed:
            if self._open_streams and scheduler_id != self._owner:
                return self._owner
            self._owner = scheduler_id
            self._open_streams += 1
            self._streams_changed.notify_all()
            return None

    def load(self, runner: ModelRunner, info: worker_pb2.WorkerInfo) -> None:
        self.runner, self.info = runner, info

    def Describe(self, request, context) -> worker_pb2.WorkerInfo:
        if self.info is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the worker is still loading its model")
        return self.info

    def Step(self, request_iterator, context) -> Iterator[worker_pb2.StepResult]:
        if self.runner is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the worker is still loading its model")
        metadata = context.invocation_metadata() or ()
        scheduler_id = next((v for k, v in metadata if k == SCHEDULER_ID_METADATA_KEY), "")
        owner = self._claim(scheduler_id)
        if owner is not None:
            log.warning(
                "refused a step stream of scheduler %r: scheduler %r has streams open",
                scheduler_id[:64],
                owner[:64],
            )
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this worker's KV pool is in use by another scheduler's step stream (a worker "
                "serves one scheduler at a time)",
            )
        try:
            # Bounded: gRPC flow control holds back a client that sends plans faster than they run.
            plans: queue.Queue = queue.Queue(maxsize=MAX_IN_FLIGHT + 2)
            closed = threading.Event()
            threading.Thread(
                target=_read_plans,
                args=(request_iterator, plans, closed),
                daemon=True,
                name="step-reader",
            ).start()
            table = self.runner.new_table()
        except BaseException:
            self._count_stream(-1)
            raise
        self._tables.add(table)
        pending: deque[PendingStep] = deque()
        # Overlap is the device's: a CPU step is done when its launch returns.
        depth = MAX_IN_FLIGHT if self.runner.device.type == "cuda" else 1
        ready = (
            _ReadyWatch(lambda item: _put(plans, closed, item), self.runner.device)
            if depth > 1
            else None
        )
        last_step_id: int | None = None
        try:
            while True:
                if pending and pending[0].ready():  # done (or had no device work): hand it back
                    yield self._finish(pending.popleft())
                    continue
                if pending:  # still on the GPU (a CPU step is done when its launch returns)
                    assert ready is not None
                    ready.watch(pending[0])  # _READY comes once it is done
                message = plans.get()
                if message is _READY:  # the top of the loop hands back the step if it is done
                    continue
                if message is _END:
                    break
                if not context.is_active():
                    # The scheduler gave this stream up (e.g. after a step timeout while we
                    # were stopped): plans still queued must not write into blocks it may
                    # already have handed to other requests.
                    break
                pending.append(self._launch(table, message, last_step_id))
                step_id = pending[-1].output.step_id
                if last_step_id is None or step_id > last_step_id:
                    last_step_id = step_id  # a rejected lower id must not lower it
                if len(pending) >= depth:
                    yield self._finish(pending.popleft())
            while pending:
                yield self._finish(pending.popleft())
        finally:  # stream closed or cancelled: its requests are gone
            closed.set()  # a reader blocked on the full queue gives up
            if ready is not None:
                ready.stop()
            self._tables.discard(table)
            try:
                with self._lock:
                    self.compute.call(self.runner.close_table, table)
            finally:
                self._count_stream(-1)
            log.info("step stream closed")

    def _launch(
        self, table: RequestTable, message: worker_pb2.StepPlan, last_step_id: int | None
    ) -> PendingStep:
        try:
            plan = plan_from_proto(message, last_step_id)
        except BadPlan as bad:  # nothing runs; releases apply, the step's requests are dropped
            with self._lock:
                self.compute.call(self.runner.release, table, bad.drop_request_ids)
            return PendingStep.done(StepOutput(bad.step_id, [-1] * bad.num_run, error=str(bad)))
        with self._lock:
            pending = self.compute.call(self.runner.launch, table, plan)
        if self.runner.device_failure is not None:
            log.critical("device failure, the worker exits: %s", self.runner.device_failure)
            self.device_failed.set()
        return pending

    def _finish(self, pending: PendingStep) -> worker_pb2.StepResult:
        """Waits for a launched step; a failure here is the device's (the worker must exit)."""
        try:
            return result_to_proto(self.compute.call(pending.wait))
        except Exception as exc:
            log.critical(
                "device failure while reading step %d, the worker exits: %s",
                pending.output.step_id,
                exc,
            )
            self.device_failed.set()
            output = pending.output
            return result_to_proto(
                StepOutput(
                    output.step_id,
                    [-1] * len(output.token_ids),
                    error=f"{type(exc).__name__}: {exc}",
                )
            )


def _put(plans: queue.Queue, closed: threading.Event, item: object) -> bool:
    """item into the bounded plan queue, unless the stream closes first."""
    while not closed.is_set():
        try:
            plans.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False


def _read_plans(request_iterator, plans: queue.Queue, closed: threading.Event) -> None:
    """Moves plans from the stream into plans; _END when the client is done or gone."""
    try:
        for message in request_iterator:
            if not _put(plans, closed, message):
                return
    except Exception as exc:  # cancelled or broken stream
        log.info("step stream ended: %s", exc)
    finally:
        _put(plans, closed, _END)


class _ReadyWatch:
    """Puts _READY into a stream's plan queue when a watched step's device work is done, so the
    loop that blocks on that queue also wakes for the oldest result. Waiting for the result itself
    instead would leave a plan that arrives meanwhile unlaunched until the step is done, and the
    GPU idle for that launch's host time: at batch 1 on the H200 the step period was ~1.56 ms for
    a ~1.22 ms step (benchmarks/NOTES.md, session 12)."""

    def __init__(self, put: Callable[[object], bool], device) -> None:
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._watched: PendingStep | None = None
        self._device_index = getattr(device, "index", None)  # a worker on cuda:N: that context
        threading.Thread(target=self._serve, args=(put,), daemon=True, name="step-ready").start()

    def watch(self, step: PendingStep) -> None:
        if step is not self._watched and step.done_event is not None:
            self._watched = step
            self._events.put(step.done_event)

    def stop(self) -> None:
        self._events.put(None)

    def _serve(self, put: Callable[[object], bool]) -> None:
        if self._device_index is not None:
            torch.cuda.set_device(self._device_index)
        while (event := self._events.get()) is not None:
            try:
                event.synchronize()
            except Exception:  # a device error: the stream's own wait reports it
                pass
            if not put(_READY):
                return

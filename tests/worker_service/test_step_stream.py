"""The Step stream's loop (worker_service/server.py) on a device whose steps finish later than
their launch, simulated: results go back in step order, each as soon as its step is done (with
no plan to wake the loop), and a plan that arrives while the oldest step still runs is launched
at once instead of after that step; a step without device work (a plan that only releases)
goes back without waiting for another plan; a failed one goes back as an error."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

from yaie.worker.v1 import worker_pb2
from yaie.worker_service.protocol import StepOutput
from yaie.worker_service.server import WorkerServicer
from yaie.worker_service.step.sampling_step import PendingStep

TIMEOUT_S = 10


class _DeviceEvent:
    """A step's done event, set by the test."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def synchronize(self) -> None:
        assert self.done.wait(TIMEOUT_S), "a step never finished"

    def query(self) -> bool:
        return self.done.is_set()


class _FailedEvent(_DeviceEvent):
    """A step whose device work failed: the event raises, as CUDA's does after a device error."""

    def synchronize(self) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def query(self) -> bool:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class _Runner:
    """launch() returns at once; step s finishes when the test sets events[s]."""

    device = SimpleNamespace(type="cuda")
    device_failure = None

    def __init__(self) -> None:
        self.events: dict[int, _DeviceEvent] = {}
        self.launched: list[tuple[int, list[int]]] = []  # (step, steps done at its launch)
        self.no_device_work = {5}
        self.failing = {8}

    def new_table(self) -> object:
        return object()

    def close_table(self, table: object) -> None:
        pass

    def launch(self, table: object, plan) -> PendingStep:
        done = [s for s, e in self.events.items() if e.query()]
        self.launched.append((plan.step_id, done))
        if plan.step_id in self.no_device_work:  # e.g. a plan that only releases requests
            return PendingStep.done(StepOutput(plan.step_id, token_ids=[]))
        failed = plan.step_id in self.failing
        event = self.events.setdefault(plan.step_id, _FailedEvent() if failed else _DeviceEvent())
        return PendingStep(StepOutput(plan.step_id, token_ids=[]), done_event=event)


class _Context:
    def invocation_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return True


def test_results_go_back_in_order_as_their_steps_finish_and_plans_launch_meanwhile():
    runner = _Runner()
    servicer = WorkerServicer()
    servicer.load(runner, worker_pb2.WorkerInfo())
    plans: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()

    def requests():
        while (step := plans.get()) is not None:
            yield worker_pb2.StepPlan(step_id=step)

    def consume() -> None:
        for result in servicer.Step(requests(), _Context()):
            assert bool(result.error) == (result.step_id in runner.failing)
            results.put(result.step_id)
        results.put(None)

    threading.Thread(target=consume, daemon=True).start()

    def launched(step: int) -> list[int]:
        """The steps done when step was launched (waits for its launch)."""
        for _ in range(TIMEOUT_S * 100):
            found = [done for s, done in runner.launched if s == step]
            if found:
                return found[0]
            threading.Event().wait(0.01)
        raise AssertionError(f"step {step} was never launched")

    plans.put(1)
    assert launched(1) == []
    plans.put(2)  # two in flight: the loop now waits for step 1
    assert launched(2) == []
    runner.events[1].done.set()
    assert results.get(timeout=TIMEOUT_S) == 1
    runner.events[2].done.set()  # no plan follows: the loop must notice step 2 on its own
    assert results.get(timeout=TIMEOUT_S) == 2
    plans.put(3)
    assert launched(3) == [1, 2]
    plans.put(4)  # step 3 still runs: 4 launches anyway, before 3's result goes back
    assert launched(4) == [1, 2]
    assert results.empty()
    runner.events[3].done.set()
    assert results.get(timeout=TIMEOUT_S) == 3
    runner.events[4].done.set()
    assert results.get(timeout=TIMEOUT_S) == 4
    plans.put(5)  # no device work, and no plan after it: its result still goes back
    assert results.get(timeout=TIMEOUT_S) == 5
    plans.put(6)
    plans.put(7)
    runner.events.setdefault(6, _DeviceEvent()).done.set()  # 6 done before its launch returns
    runner.events.setdefault(7, _DeviceEvent()).done.set()
    assert [results.get(timeout=TIMEOUT_S) for _ in range(2)] == [6, 7]
    plans.put(8)  # the device fails: the step's result (an error) goes back, the worker exits
    assert results.get(timeout=TIMEOUT_S) == 8
    assert servicer.device_failed.is_set()
    plans.put(None)  # the scheduler closes the stream
    assert results.get(timeout=TIMEOUT_S) is None

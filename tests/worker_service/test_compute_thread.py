"""A CPU worker's torch work on one thread (step/compute_thread.py), and its results sent as soon
as each step is done."""

from __future__ import annotations

import threading
import time

import pytest

from tests.worker_service.driver import StepStream, start_cpu_worker, stop_worker
from tests.worker_service.test_server import new_request, run
from yaie.worker_service import app
from yaie.worker_service.step.compute_thread import ComputeThread
from yaie.worker_service.step.runner import ModelRunner
from yaie.worker_service.step.sampling_step import PendingStep


def test_threaded_calls_run_on_one_thread_and_raise_what_they_raise():
    compute = ComputeThread(threaded=True)
    idents = {compute.call(threading.get_ident) for _ in range(5)}
    assert len(idents) == 1 and threading.get_ident() not in idents
    with pytest.raises(KeyError, match="boom"):
        compute.call({}.__getitem__, "boom")
    # A call made from the compute thread itself runs inline instead of waiting on itself.
    assert compute.call(lambda: compute.call(threading.get_ident)) in idents


def test_unthreaded_calls_run_in_the_caller():
    assert ComputeThread(threaded=False).call(threading.get_ident) == threading.get_ident()


@pytest.fixture
def recorded(monkeypatch, tiny_model_dir):
    """A CPU worker whose load, launches and result reads log (what, step id, thread)."""
    events: list[tuple[str, int, int]] = []
    load, launch, wait = app.load_model, ModelRunner.launch, PendingStep.wait

    def recording_load(*args, **kwargs):
        events.append(("load", 0, threading.get_ident()))
        return load(*args, **kwargs)

    def recording_launch(self, table, plan):
        events.append(("launch", plan.step_id, threading.get_ident()))
        if plan.step_id == 1:
            time.sleep(0.3)  # plan 2 is surely waiting when step 1 is done
        return launch(self, table, plan)

    def recording_wait(self):
        events.append(("wait", self.output.step_id, threading.get_ident()))
        return wait(self)

    monkeypatch.setattr(app, "load_model", recording_load)
    monkeypatch.setattr(ModelRunner, "launch", recording_launch)
    monkeypatch.setattr(PendingStep, "wait", recording_wait)
    handle = start_cpu_worker(tiny_model_dir("LlamaForCausalLM"), 4, 64)
    yield handle[1], events
    stop_worker(handle)


def test_a_cpu_worker_loads_and_steps_on_one_thread_and_answers_each_step_when_done(recorded):
    channel, events = recorded
    stream = StepStream(channel)
    stream.send(new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    stream.send(**run([1], [1], [1], [2]))  # sent ahead of result 1
    results = [stream.recv(), stream.recv()]
    stream.close()
    assert [r.step_id for r in results] == [1, 2] and all(r.token_ids[0] >= 0 for r in results)
    assert len({thread for _, _, thread in events}) == 1  # one OpenMP team
    assert events[0][2] != threading.get_ident()
    # On the CPU a launch computes the step: its result goes back before the next launch.
    assert [(what, step) for what, step, _ in events] == [
        ("load", 0),
        ("launch", 1),
        ("wait", 1),
        ("launch", 2),
        ("wait", 2),
    ]

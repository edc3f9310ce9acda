"""The processes of a tensor-parallel worker. Rank 0 is the `yaie worker --tp N` process: it
serves gRPC, starts ranks 1..N-1 as child processes (`python -m yaie.worker_service.tp.ranks`)
and watches them; each of those loads its shard and applies the plans rank 0 shares.

A rank that dies takes the group down: rank 0 stops and exits 1 (its scheduler sees the worker
lost); ranks 1..N-1 die with rank 0 (PR_SET_PDEATHSIG, and a watch on their parent's pid).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from yaie.worker_service.app import build_runner
from yaie.worker_service.config import WorkerConfig
from yaie.worker_service.loader import read_config, resolve_model_dir
from yaie.worker_service.models import check_tp_config, parse_config
from yaie.worker_service.python_child import module_command
from yaie.worker_service.step.runner import MAX_IN_FLIGHT, ModelRunner
from yaie.worker_service.tp.plan_channel import PlanOp, receive_plan

log = logging.getLogger(__name__)

POLL_S = 0.2
HARD_EXIT_AFTER_S = 5.0  # a rank 0 stuck (a collective with a dead peer, the rendezvous) exits
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _signal_on_parent_death() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when rank 0's main thread ends."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the watch on the parent's pid and gloo's broken sockets remain


def check_model_fits(config: WorkerConfig) -> None:
    """ValueError (before any process starts) when config.tp cannot split the model."""
    check_tp_config(parse_config(read_config(resolve_model_dir(config.model))), config.tp)


class RankProcesses:
    """Ranks 1..tp-1 of this worker, as child processes; this process is rank 0."""

    def __init__(self, processes: list[subprocess.Popen]) -> None:
        self.processes = processes  # processes[i] is rank i + 1
        self.failed = False
        self._stopping = threading.Event()

    @classmethod
    def start(cls, config: WorkerConfig) -> RankProcesses:
        """Sets this process up as rank 0 (environment of torch.distributed's env:// rendezvous)
        and starts the other ranks. Call from the main thread (PR_SET_PDEATHSIG follows it)."""
        check_model_fits(config)
        group_env = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(config.tp),
            "NCCL_NVLS_ENABLE": "0",  # NVLink multicast stays off
        }
        os.environ.update(group_env, RANK="0", LOCAL_RANK="0")
        command = module_command(
            __name__,
            "--config",
            json.dumps(dataclasses.asdict(config), default=str),
            "--log-level",
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        processes = []
        for rank in range(1, config.tp):
            env = {**os.environ, **group_env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            # A session of its own: a terminal's Ctrl-C reaches rank 0 only, which stops the rest.
            process = subprocess.Popen(
                command, env=env, start_new_session=True, preexec_fn=_signal_on_parent_death
            )
            log.info("tensor-parallel rank %d: pid %d", rank, process.pid)
            processes.append(process)
        return cls(processes)

    def watch(self, on_failure: Callable[[str], None]) -> None:
        """Calls on_failure(reason) from a daemon thread when a rank exits while the group runs."""
        threading.Thread(
            target=self._watch, args=(on_failure,), daemon=True, name="tp-watch"
        ).start()

    def _watch(self, on_failure: Callable[[str], None]) -> None:
        while not self._stopping.wait(POLL_S):
            dead = [(i + 1, p) for i, p in enumerate(self.processes) if p.poll() is not None]
            if dead:
                rank, code = dead[0][0], dead[0][1].returncode
                reason = f"tensor-parallel rank {rank} exited with code {code}"
                log.critical("%s: the worker group is down", reason)
                self.failed = True
                on_failure(reason)
                self._terminate()
                if not self._stopping.wait(HARD_EXIT_AFTER_S):
                    log.critical("rank 0 did not stop in %.0f s: exiting", HARD_EXIT_AFTER_S)
                    os._exit(1)
                return

    def _terminate(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops every rank (SIGTERM, then SIGKILL after timeout_s) and reaps it."""
        self._stopping.set()
        self._terminate()
        for process in self.processes:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_group(
    config: WorkerConfig,
    stop: threading.Event,
    stopped_by: list[str],
    serve: Callable[[], int],
) -> int:
    """Rank 0: starts the other ranks, then serve() (the worker, until stop is set: by a signal,
    or here when a rank dies, with the reason in stopped_by); exit status 1 when a rank died."""
    try:
        ranks = RankProcesses.start(config)
    except (OSError, ValueError) as exc:
        log.error("cannot start the worker: %s", exc)
        return 1

    def on_failure(reason: str) -> None:
        stopped_by.append(reason)
        stop.set()

    ranks.watch(on_failure)
    try:
        status = serve()
    except Exception:
        if not ranks.failed:
            raise
        log.exception("rank 0 failed after another rank died")
        status = 1
    finally:
        ranks.stop()
    return 1 if ranks.failed else status


def follow_plans(runner: ModelRunner) -> int:
    """Ranks > 0: applies each message rank 0 shares to a mirror of its request tables, so that
    this rank runs the same batches (and collectives) in the same order. Returns an exit status
    once rank 0 is gone (its broadcast fails) or a step failed."""
    assert runner.tp is not None and runner.tp.rank > 0
    tables = {}
    pending: deque = deque()
    while True:
        try:
            op, table_id, plan = receive_plan(runner.tp)
        except RuntimeError as exc:
            log.info("rank 0 is gone (%s): exiting", exc)
            return 1
        if op is PlanOp.CLOSE:
            if table_id in tables:
                runner.close_table(tables.pop(table_id))
            continue
        if table_id not in tables:
            tables[table_id] = runner.new_table()
        pending.append(runner.launch(tables[table_id], plan))
        if runner.device_failure is not None:
            log.critical("step failed, the worker group goes down: %s", runner.device_failure)
            return 1
        while len(pending) >= MAX_IN_FLIGHT:
            pending.popleft().wait()  # results are rank 0's to send; this frees the step


def _exit_with_parent() -> None:
    """Exits when the parent (rank 0) is gone, where PR_SET_PDEATHSIG is unavailable or late."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a rank > 0 of a tensor-parallel worker")
    parser.add_argument("--config", required=True, help="the WorkerConfig as JSON")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s rank {os.environ.get('RANK')} %(name)s: %(message)s",
    )
    _exit_with_parent()
    config = WorkerConfig(**json.loads(args.config))
    try:
        runner, _ = build_runner(config)
    except Exception:
        log.exception("cannot start tensor-parallel rank %s", os.environ.get("RANK"))
        return 1
    return follow_plans(runner)


if __name__ == "__main__":
    sys.exit(main())

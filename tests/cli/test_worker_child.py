"""What `yaie serve` hands its workers: an environment of worker variables only, the descriptor
a /dev/fd secret path names, and a run secret in memory; stale secret files of dead runs go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from yaie.cli import worker_child


def test_the_worker_environment_keeps_only_what_a_worker_reads() -> None:
    kept = {
        "PATH": "/bin",
        "HOME": "/home/u",
        "HF_HOME": "/hf",
        "NCCL_DEBUG": "INFO",
        "PYTHONPATH": "/src",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "2",
        "OMP_WAIT_POLICY": "PASSIVE",
        "LD_PRELOAD": "/usr/lib/libtcmalloc.so.4",
    }
    caller = {
        **kept,
        "CUDA_VISIBLE_DEVICES": "0,1",
        "YAIE_API_KEY": "sk-secret",
        "AWS_SECRET_ACCESS_KEY": "x",
        "GITHUB_TOKEN": "y",
    }
    env = worker_child.worker_environment(caller, "3")
    assert env == {**kept, "CUDA_VISIBLE_DEVICES": "3"}
    assert worker_child.worker_environment(caller, None)["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_descriptor_path_names_the_descriptor_to_pass() -> None:
    assert worker_child.inherited_fds("/proc/self/fd/7") == (7,)
    assert worker_child.inherited_fds("/dev/fd/12") == (12,)
    assert worker_child.inherited_fds("/run/secret") == ()
    assert worker_child.inherited_fds(None) == ()


def test_the_run_secret_is_readable_by_a_child_and_leaves_no_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    secret = worker_child.RunSecret()
    try:
        value = Path(secret.path).read_bytes()
        assert len(value) >= 32 and Path(secret.path).read_bytes() == value  # re-readable
        read = subprocess.run(
            [sys.executable, "-c", f"print(open({secret.path!r}).read())"],
            pass_fds=worker_child.inherited_fds(secret.path),
            capture_output=True,
            text=True,
            check=True,
        )
        assert read.stdout.strip() == value.decode()
        if hasattr(os, "memfd_create"):
            assert list(tmp_path.iterdir()) == []
    finally:
        secret.close()
    assert list(tmp_path.iterdir()) == []


def test_stale_secret_files_of_dead_runs_are_removed(tmp_path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = tmp_path / f"yaie-internal-secret-{gone.stdout.strip()}-abc"
    live = tmp_path / f"yaie-internal-secret-{os.getpid()}-def"
    legacy = tmp_path / "yaie-internal-secret-q8_zk2la"
    other = tmp_path / "unrelated"
    for path in (dead, live, legacy, other):
        path.write_text("s")
    removed = worker_child.remove_stale_files(str(tmp_path))
    assert sorted(removed) == sorted([dead, legacy])
    assert sorted(tmp_path.iterdir()) == sorted([live, other])

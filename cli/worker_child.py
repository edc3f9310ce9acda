"""What a local worker child of `yaie serve` inherits: an environment holding only what a worker
reads (not the API key, nor anything else of the caller's), and the run's internal secret in
an anonymous in-memory file passed as a descriptor, so that no secret file outlives the run.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger("yaie.serve")

# Variables a worker (Python, torch, CUDA, Triton, NCCL, the hub cache, gRPC) reads.
_WORKER_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "XDG_CACHE_HOME",
        "LD_PRELOAD",  # an allocator (tcmalloc, jemalloc) for the CPU forward
        "MALLOC_CONF",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "no_proxy",
    }
)
_WORKER_PREFIXES = (
    "LC_",
    "PYTHON",  # PYTHONPATH, PYTHONHASHSEED, PYTHONUNBUFFERED ...
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "TORCH",  # TORCH_*, TORCHINDUCTOR_*
    "PYTORCH_",
    "TRITON_",
    "OMP_",  # the CPU forward's threads: OMP_NUM_THREADS, OMP_WAIT_POLICY, OMP_PROC_BIND ...
    "GOMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "MALLOC_",  # glibc's MALLOC_ARENA_MAX ...
    "TCMALLOC_",
    "HF_",
    "HUGGINGFACE_",
    "GRPC_",
    "COVERAGE_",  # coverage of subprocesses in the test suite
)
_FD_PATH = re.compile(r"^/(?:dev|proc/self)/fd/(\d+)$")
SECRET_FILE_PREFIX = "yaie-internal-secret-"


def worker_environment(environ: Mapping[str, str], gpus: str | None) -> dict[str, str]:
    """The child's environment: environ's worker variables only; gpus: its CUDA_VISIBLE_DEVICES."""
    env = {
        name: value
        for name, value in environ.items()
        if name in _WORKER_NAMES or name.startswith(_WORKER_PREFIXES)
    }
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    return env


def inherited_fds(secret_path: str | None) -> tuple[int, ...]:
    """The descriptor a /dev/fd/N secret path names: the child must inherit it to read it."""
    match = _FD_PATH.match(secret_path or "")
    return (int(match.group(1)),) if match else ()


class RunSecret:
    """A random secret for one run of the stack, readable at `path` by this process and by the
    children it passes `fds` to. On Linux an anonymous memory file (gone with the last process
    that holds it, SIGKILL included); elsewhere a private temporary file, removed by close()
    and, should this process be killed first, by the next run (remove_stale_files)."""

    def __init__(self) -> None:
        remove_stale_files()
        value = secrets.token_urlsafe(32).encode()
        self._fd: int | None = None
        self._file: str | None = None
        if hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("yaie-internal-secret")  # close-on-exec
            os.write(self._fd, value)
            self.path = f"/proc/self/fd/{self._fd}"  # each open reads it from the start
        else:
            fd, self._file = tempfile.mkstemp(prefix=f"{SECRET_FILE_PREFIX}{os.getpid()}-")
            with os.fdopen(fd, "wb") as file:  # mode 0600
                file.write(value)
            self.path = self._file

    @property
    def fds(self) -> tuple[int, ...]:
        return () if self._fd is None else (self._fd,)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            Path(self._file).unlink(missing_ok=True)
            self._file = None


def remove_stale_files(folder: str | None = None) -> list[Path]:
    """Removes the secret files earlier runs left behind (their process gone, or named by a
    version that wrote no process id); returns them."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{SECRET_FILE_PREFIX}*"):
        pid = path.name.removeprefix(SECRET_FILE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            if path.stat().st_uid != os.getuid():
                continue  # another user's: not ours to judge
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    if removed:
        logger.info("removed %d internal secret file(s) of earlier runs", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True

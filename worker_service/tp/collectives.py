"""The collectives of a tensor-parallel worker: joining the process group of its ranks (NCCL on
GPUs, gloo on the CPU) and the operations the sharded model calls (all-reduce, all-gather).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from yaie.worker_service.config import WorkerConfig

log = logging.getLogger(__name__)

PLAN_WAIT_TIMEOUT = timedelta(days=365)


@dataclass
class TPGroup:
    """This process's place in its worker's tensor-parallel group of `size` ranks."""

    rank: int
    size: int
    device: torch.device
    # Plans travel on a gloo group (host memory, no device sync); None is the default group.
    cpu_group: dist.ProcessGroup | None = None

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """Sums x over the ranks, in place (the row-parallel layers' partial outputs)."""
        dist.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, n] of every rank -> [T, size * n], rank r's columns at [r * n, (r + 1) * n).
        Every rank receives the same bytes (a copy, no arithmetic)."""
        rows, cols = x.shape
        out = x.new_empty(self.size * rows, cols)  # rank r's rows at [r * T, (r + 1) * T)
        dist.all_gather_single(out, x.contiguous())
        return out.view(self.size, rows, cols).transpose(0, 1).reshape(rows, self.size * cols)

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(t.item())


def join_group(config: WorkerConfig) -> TPGroup:
    """Joins the group that ranks.RankProcesses.start set up (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT in the environment). Rank r uses cuda:{base + r} on CUDA."""
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if size != config.tp:
        raise ValueError(f"WORLD_SIZE {size} differs from --tp {config.tp}")
    base = config.torch_device()
    if base.type == "cuda":
        index = (base.index or 0) + local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"--tp {size} needs {size} GPUs from cuda:{base.index or 0}, "
                f"{torch.cuda.device_count()} visible"
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=rank, world_size=size, device_id=device)
    else:
        device = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # the ranks share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
        dist.init_process_group("gloo", rank=rank, world_size=size)
    # Ranks > 0 wait for plans as long as the worker idles: no timeout (a dead rank is seen by
    # rank 0's watch of its children, by PR_SET_PDEATHSIG, and by gloo's closed sockets).
    cpu_group = dist.new_group(backend="gloo", timeout=PLAN_WAIT_TIMEOUT)
    log.info("tensor-parallel rank %d of %d on %s", rank, size, device)
    return TPGroup(rank, size, device, cpu_group)

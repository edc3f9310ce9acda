"""Tensor parallelism inside one worker: collectives.py (the group's collectives, what the
sharded model calls), plan_channel.py (rank 0 shares each plan), ranks.py (the group's processes).
"""

from yaie.worker_service.tp.collectives import TPGroup

__all__ = ["TPGroup"]

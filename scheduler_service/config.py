"""The scheduler's one frozen configuration, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the engine (batching, queue, overlap, prefix cache).

    Values discovered at run time (vocab, block size, pool size) live on the Engine, not here.
    """

    # Tokens computed per step over all requests (decodes count 1 each; prefill chunks fill the
    # rest): the chunked-prefill budget.
    max_num_batched_tokens: int = 2048
    # Requests running at once per worker (each holds KV blocks).
    max_running_requests: int = 256
    # Requests waiting over all workers; beyond it submit() raises ResourceExhaustedError.
    max_queue_size: int = 4096
    # Most prompt tokens one request computes in one step (the step budget caps it too).
    prefill_chunk_size: int = 2048
    # Send plan N+1 before reading result N (the worker feeds decodes their last token itself).
    enable_overlap: bool = True
    # A step result slower than this marks the worker unhealthy, in seconds.
    step_timeout_s: float = 120.0
    # Timeout of the Describe call at start, in seconds.
    connect_timeout_s: float = 30.0
    # Share cached prefixes through the radix tree (off: every prompt is computed in full).
    enable_prefix_cache: bool = True
    # Longest-prefix-first admission, except that a request waiting more than this many steps
    # is admitted first (in arrival order): no request starves.
    max_wait_steps: int = 32
    # Waiting requests considered for prefix ordering per step (the queue head; bounds the cost).
    prefix_scan_window: int = 256

    def __post_init__(self) -> None:
        positive = {
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_running_requests": self.max_running_requests,
            "max_queue_size": self.max_queue_size,
            "prefill_chunk_size": self.prefill_chunk_size,
            "prefix_scan_window": self.prefix_scan_window,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_wait_steps < 0:
            raise ValueError(f"max_wait_steps must be >= 0, got {self.max_wait_steps}")
        if not self.step_timeout_s > 0 or not self.connect_timeout_s > 0:
            raise ValueError("step_timeout_s and connect_timeout_s must be > 0")

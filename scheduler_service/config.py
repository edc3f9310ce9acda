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
    max_num_batched_tokens: int = 8192
    # Requests running at once per worker (each holds KV blocks).
    max_running_requests: int = 256
    # Requests waiting over all workers; beyond it submit() raises ResourceExhaustedError.
    max_queue_size: int = 4096
    # Most prompt tokens one request computes in one step (the step budget caps it too).
    prefill_chunk_size: int = 2048
    # Stream interval under load (SGLang's stream_interval, in tokens): with at least
    # stream_interval_min_batch requests running, a request's reader is woken once per
    # stream_interval tokens (its first and last token at once); below, one frame per token.
    # Trade-off: under load a client sees tokens in bursts, and a stop string is acted on up to
    # stream_interval - 1 steps late (the extra tokens are computed and dropped; output is exact).
    stream_interval: int = 4
    stream_interval_min_batch: int = 64
    # Backpressure: a request whose client has not taken this many of its tokens yet (a slow or
    # stalled reader: its frames wait in the transport's buffers, then here) is paused: kept
    # with its KV blocks but not scheduled, until the client reads. A paused request is the
    # first preempted when blocks or a running slot are needed (it resumes from the tree).
    max_stream_backlog: int = 64
    # Send plan N+1 before reading result N (the worker feeds decodes their last token itself).
    enable_overlap: bool = True
    # With overlap: plans sent ahead of the oldest unread result. At 2, plan N+2 leaves once
    # result N is in, so the worker holds the next plan while step N+1 runs and launches it at
    # once: the result's way back, the scheduler's step and the worker's launch (~3 ms of host
    # at 256 rows) need not fit in one step's device time. H200, same call, 2 vs 1: random
    # +5.7%, shared prefixes +2.7% at 256 running and +15% at 512 (benchmarks/NOTES.md,
    # session 15). A request that stops is seen one step later (one more token computed and
    # dropped). Jump-forward keeps 1: a jump cancels the one decode of its request in flight.
    overlap_depth: int = 2
    # A step result slower than this, or a health check unanswered for this long (at most
    # 10 s), marks the worker lost (hung, e.g. SIGSTOPped): its requests move to the others.
    step_timeout_s: float = 120.0
    # How often each worker's grpc.health.v1 is polled, in seconds (it also catches a worker
    # that hangs or says NOT_SERVING while idle, when no step result is awaited).
    health_check_interval_s: float = 1.0
    # With no worker left, new and requeued requests wait this long for one to (re)join before
    # they fail with UNAVAILABLE, in seconds.
    no_worker_timeout_s: float = 30.0
    # On drain (SIGTERM): how long streams in flight may run before they are cancelled (ABORT).
    drain_timeout_s: float = 30.0
    # Timeout of the Describe call at start, in seconds.
    connect_timeout_s: float = 30.0
    # Share cached prefixes through the radix tree (off: every prompt is computed in full).
    enable_prefix_cache: bool = True
    # Longest-prefix-first admission, except that a request waiting more than this many steps
    # is admitted first (in arrival order): no request starves.
    max_wait_steps: int = 32
    # Waiting requests considered for prefix ordering per step (the queue head; bounds the cost).
    prefix_scan_window: int = 256
    # Admission waves under a full batch: while fewer than this many running slots are free
    # (and more requests wait), the waiting ones are admitted together once enough are, or once
    # the first has waited this many steps. Why: every step that admits a prompt beside a full
    # batch of decodes pays the mixed step's host launch (H200, 256 decode rows over shared
    # prefixes + one 128-token prompt: 14.9 ms vs 7.0 ms for the decodes alone; 16 admissions
    # in one step at 256-512 rows took 23-32 ms); shared-prefix runs that admitted one or two
    # requests a step as slots freed up had 183-392 such steps and took 14.4 s, one whose
    # admissions came ~16 at a time 72-77 steps and 10.2 s (other calls, other hosts:
    # benchmarks/NOTES.md, session 16). Capped at max_running_requests // 16. 1 (the default,
    # until an A/B on the GPU says otherwise): admit as soon as a slot frees.
    admission_wave: int = 1
    # Structured output: append the tokens a request's grammar forces (a JSON key, `": "`)
    # without a decode step each (SGLang's jump-forward decoding). Off by default: on the H200
    # it cost 2-3x throughput (its extend chunks make steps eager and wait for the previous
    # token before launch; benchmarks/NOTES.md, session 5), where on the CPU it helps.
    enable_jump_forward: bool = False

    @property
    def plans_ahead(self) -> int:
        """Plans in flight besides the one whose result the step loop reads next."""
        if not self.enable_overlap:
            return 0
        return 1 if self.enable_jump_forward else self.overlap_depth

    def __post_init__(self) -> None:
        positive = {
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_running_requests": self.max_running_requests,
            "max_queue_size": self.max_queue_size,
            "prefill_chunk_size": self.prefill_chunk_size,
            "prefix_scan_window": self.prefix_scan_window,
            "stream_interval": self.stream_interval,
            "stream_interval_min_batch": self.stream_interval_min_batch,
            "max_stream_backlog": self.max_stream_backlog,
            "overlap_depth": self.overlap_depth,
            "admission_wave": self.admission_wave,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_wait_steps < 0:
            raise ValueError(f"max_wait_steps must be >= 0, got {self.max_wait_steps}")
        timeouts = {
            "step_timeout_s": self.step_timeout_s,
            "connect_timeout_s": self.connect_timeout_s,
            "health_check_interval_s": self.health_check_interval_s,
        }
        for name, value in timeouts.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not self.no_worker_timeout_s >= 0 or not self.drain_timeout_s >= 0:
            raise ValueError("no_worker_timeout_s and drain_timeout_s must be >= 0")

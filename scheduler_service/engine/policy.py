"""Batch formation for one worker: which requests run how many tokens in the next step, and
the KV blocks they hold (allocated, cached in the radix tree, released).

Continuous batching with chunked prefill under a per-step token budget: running requests go
first, by priority (GenerateRequest.priority, higher first), then oldest first (a decode costs 1
token, a prefill continues with a chunk); waiting requests are then admitted by priority, and
within a priority longest-cached-prefix first, except that resumed requests (preempted, or
moved from a lost worker: admitted before) and requests waiting longer than max_wait_steps go
first in arrival order, so none starves within its priority. A request whose prompt shares 2+
blocks with a prompt still being computed waits for those blocks to enter the tree rather than
computing them twice, and the later completions of a request with n > 1 wait for its first to
compute the prompt. When a running request needs a block and the pool has none, the running
request of the lowest priority, newest first, is preempted (recomputed later from its tokens,
its computed blocks cached in the tree); so is one of lower priority than the best waiting
request when the batch or the pool has no room for that one. New requests also join a plan
only while its encoding fits under the worker's receive limit (max_plan_bytes). Under a full
batch, requests may be admitted in waves (SchedulerConfig.admission_wave), not one a step.

Of each Sequence the policy alone writes the admission and block fields (queued_at_step,
hit_estimate, admitted_once, num_cached_tokens, block_ids, match).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from yaie.kernels.cache import KVCacheManager, PrefixMatch
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.prefix_sharing import (
    HitEpochs,
    first_block_key,
    worth_waiting,
)
from yaie.scheduler_service.engine.priority_order import insert_by_priority
from yaie.scheduler_service.engine.runs import Runs
from yaie.scheduler_service.engine.sequence import Sequence
from yaie.scheduler_service.workers.step_plan import (
    DEFAULT_MAX_PLAN_BYTES,
    PLAN_ENTRY_BYTES,
    PLAN_SLACK_BYTES,
    new_request_bytes,
)


@dataclass
class AdmissionCounters:
    """Prompt tokens over first admissions, and how many of them were cache hits."""

    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class BatchPolicy:
    """Forms the runs of each step; allocates (and locks) the blocks they write, caches the
    computed ones in the tree and frees them when their request is done with them."""

    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVCacheManager,
        preempt: Callable[[Sequence], None],
        max_plan_bytes: int = 0,
    ) -> None:
        self.config = config
        self.kv = kv
        # The worker's receive limit (0: not reported): new requests join a plan while their
        # wire size fits under it, less room for the plan's per-entry arrays.
        self.max_plan_bytes = max_plan_bytes or DEFAULT_MAX_PLAN_BYTES
        self.block_size = kv.block_size
        self._preempt = preempt  # takes seq out of running; frees its blocks when it can
        self._blocks_pending = 0  # during schedule(): blocks on their way back (retiring ones)
        self.hit_epochs = HitEpochs()  # when blocks entered the tree, by prompt (_hit_estimate)
        self.counters = AdmissionCounters()
        self.num_steps = 0  # schedule() calls so far

    def successor(self, kv: KVCacheManager, max_plan_bytes: int = 0) -> BatchPolicy:
        """A policy for the worker's fresh pool (after it was lost): the hit rate spans the
        worker's whole life, and the step count goes on (queue stamps stay comparable)."""
        policy = BatchPolicy(self.config, kv, self._preempt, max_plan_bytes)
        policy.counters = self.counters
        policy.num_steps = self.num_steps
        return policy

    def schedule(
        self, running: list[Sequence], waiting: deque[Sequence], blocks_pending: int
    ) -> Runs:
        """The next step's runs. running and waiting are updated in place (admissions,
        preemptions) and stay in priority order (highest first; see queue()). blocks_pending:
        blocks retiring requests hold, back once their plans in flight are; a request short of
        blocks that these would cover waits for them instead of preempting (an estimate: blocks
        another request shares stay held, and the next step counts again)."""
        budget = self.config.max_num_batched_tokens
        runs = Runs()
        add_seq, add_num_tokens = runs.seqs.append, runs.num_tokens.append
        short = False  # some running request could not get its blocks (or was preempted)
        self._blocks_pending = blocks_pending
        self._preempt_for_priority(running, waiting)
        preempted: set[int] = set()  # ids of the requests preempted during this loop
        bs, backlog = self.block_size, self.config.max_stream_backlog
        for seq in list(running):  # highest priority, then oldest, first
            if budget <= 0:
                break
            if preempted and id(seq) in preempted:
                continue
            # Exact backlog check only near the bound (a reader keeping up costs nothing).
            if (seq.backlog_bound >= backlog or seq.held_back) and self._hold_back(seq):
                continue
            n = self._next_chunk(seq, budget)
            need = -(-(seq.num_scheduled + n) // bs) - len(seq.block_ids)
            if need > 0:  # a block boundary: the only step of a decode that allocates
                if not self._make_room(seq, need, running, preempted):
                    short = True
                    continue
                seq.block_ids += self.kv.allocate(need)
            if n > 0:
                add_seq(seq)
                add_num_tokens(n)
                budget -= n
        if not short:
            runs.extend(self._admit(running, waiting, budget))
        self.num_steps += 1  # every request still waiting has now waited one more step
        return runs

    def wait_steps(self, seq: Sequence) -> int:
        """Steps seq has spent waiting since it was (re)queued (stamped by queue())."""
        return self.num_steps - seq.queued_at_step

    def queue(self, seq: Sequence, waiting: deque[Sequence], first: bool = False) -> None:
        """Puts seq in waiting, stamped with the current step: after the requests of its
        priority (before them when first), so that waiting stays in priority order."""
        seq.queued_at_step = self.num_steps
        insert_by_priority(waiting, seq, first)

    def cache_prompt(self, seq: Sequence, end: int) -> None:
        """A prefill chunk of seq is computed up to end (its result is in): its full blocks go
        into the tree now, so requests admitted while seq still runs hit them."""
        assert seq.match is not None
        bs = self.block_size
        if self.config.enable_prefix_cache and end // bs * bs > seq.match.num_tokens:
            tokens = seq.token_ids[:end]
            seq.match = self.kv.cache_running(
                tokens, seq.block_ids, seq.match, seq.request.namespace
            )
            self.hit_epochs.entered(first_block_key(seq, bs))

    def release(self, seq: Sequence, cache: bool) -> None:
        """No plan in flight runs seq: its blocks go back to the pool, its computed full blocks
        into the tree when cache (and the prefix cache is on)."""
        assert seq.match is not None
        num_kv = min(seq.num_scheduled, len(seq.token_ids))
        cache = cache and self.config.enable_prefix_cache
        self.kv.release(
            seq.token_ids[:num_kv], seq.block_ids, seq.match, seq.request.namespace, cache=cache
        )
        if cache:
            self.hit_epochs.entered(first_block_key(seq, self.block_size))

    def _hold_back(self, seq: Sequence) -> bool:
        """Whether seq's client is max_stream_backlog tokens behind (backpressure: a slow or
        stalled reader must not keep the worker generating for it); sets seq.held_back."""
        seq.held_back = self._is_behind(seq)
        if seq.held_back:  # the reader is woken for them, whatever the stream interval
            seq.events.release()
        return seq.held_back

    def _is_behind(self, seq: Sequence) -> bool:
        backlog = self.config.max_stream_backlog
        # backlog_bound >= its undelivered tokens: under the limit, no exact count is needed
        # (this runs over every running request whenever a full batch has requests waiting)
        return seq.backlog_bound >= backlog and seq.events.num_undelivered(seq.index) >= backlog

    def _make_room(
        self, seq: Sequence, need: int, running: list[Sequence], preempted: set[int]
    ) -> bool:
        """Whether need blocks can be allocated for seq, after preempting held-back requests
        (their clients are not reading), then the last running ones (the lowest priority,
        newest first; seq included, last), while no freed blocks are on their way anyway. Never
        one already in this step's runs: held-back ones have none, and runs are formed in
        running's order."""
        while not self.kv.can_allocate(need):
            if self._covered(need):
                return False
            victim = self._held_back_victim(running, seq) or running[-1]
            running.remove(victim)
            preempted.add(id(victim))
            self._evict(victim)
            if victim is seq:
                return False
        return True

    def _preempt_for_priority(self, running: list[Sequence], waiting: deque[Sequence]) -> None:
        """Before any run is formed: while the batch is full, or the pool cannot hold the next
        chunk of the best waiting request besides what the running ones need this step, the
        last running request (lowest priority, newest) is preempted if its priority is below
        that one's; blocks already on their way are waited for instead of preempting for them."""
        if not waiting or not running or running[-1].priority >= waiting[0].priority:
            return  # (the common case costs nothing: no priority gap)
        top = self._admission_order(waiting)[0]
        match = self._match(top)
        n = min(len(top.token_ids) - match.num_tokens, self.config.prefill_chunk_size)
        need = self._num_blocks(match.num_tokens + n) - len(match.blocks)
        growth = [self._num_new_blocks(s) for s in running]
        while running and running[-1].priority < top.priority:
            full = len(running) >= self.config.max_running_requests
            fits = self._covered(need + sum(growth), match)
            if not full and fits:
                return
            growth.pop()
            self._evict(running.pop())

    def _num_new_blocks(self, seq: Sequence) -> int:
        """Blocks the running request seq needs for its next run (the step budget aside)."""
        n = self._next_chunk(seq, self.config.max_num_batched_tokens)
        return max(0, self._num_blocks(seq.num_scheduled + n) - len(seq.block_ids))

    def _evict(self, victim: Sequence) -> None:
        """Preempts victim (taken out of running); its blocks come back at once unless a plan
        in flight still runs it, and count as on their way until then."""
        if victim.in_flight > 0:
            self._blocks_pending += len(victim.block_ids)
        self._preempt(victim)

    def _covered(self, need: int, match: PrefixMatch | None = None) -> bool:
        """Whether need blocks can be allocated now, or once the pending ones are back."""
        return self.kv.can_allocate(max(0, need - self._blocks_pending), match)

    def _held_back_victim(
        self, running: list[Sequence], spare: Sequence | None = None
    ) -> Sequence | None:
        """The newest held-back running request but spare, if any."""
        return next((s for s in reversed(running) if s is not spare and self._is_behind(s)), None)

    def _next_chunk(self, seq: Sequence, budget: int) -> int:
        """Tokens seq runs next: the rest of its known tokens in chunks, or 1 (a decode); 0 when
        the tokens in flight already finish it by length (no step is wasted on it)."""
        known = len(seq.token_ids) + seq.pending
        if seq.pending and known - seq.num_prompt_tokens >= seq.request.max_new_tokens:
            return 0
        return min(known - seq.num_scheduled, budget, self.config.prefill_chunk_size)

    def _admit(self, running: list[Sequence], waiting: deque[Sequence], budget: int) -> Runs:
        runs = Runs()
        limit = self.config.max_running_requests
        if not waiting or budget <= 0:
            return runs
        if len(running) >= limit and not self._free_slot(running, waiting):
            return runs  # (ordering the queue costs a prefix match per waiting request)
        if self._waits_for_wave(running, waiting):
            return runs
        sharing = self._prompts_being_computed(running)
        room = self.max_plan_bytes - PLAN_ENTRY_BYTES * len(running) - PLAN_SLACK_BYTES
        for seq in self._admission_order(waiting):
            if budget <= 0 or (len(running) >= limit and not self._free_slot(running, waiting)):
                break
            if self._hold_back(seq):  # preempted while its client was not reading
                continue
            # A request's NewRequest (its tokens, grammar and logit bias) goes in this plan.
            size = new_request_bytes(seq.token_ids, seq.request.sampling)
            if size > room and runs:
                break  # the plan is full: the next step sends it (its place in line kept)
            if not seq.admitted_once and worth_waiting(
                seq, self._hit_estimate(seq), sharing, self.block_size
            ):
                continue
            if seq.leader is not None and self._waits_for_leader(seq):
                continue
            match = self._match(seq)
            n = min(len(seq.token_ids) - match.num_tokens, budget, self.config.prefill_chunk_size)
            need = self._num_blocks(match.num_tokens + n) - len(match.blocks)
            if not self._room_for_admission(running, need, match):
                break  # head of line: no later request jumps a request that does not fit
            self.kv.lock(match)
            seq.match = match
            seq.block_ids = match.blocks + self.kv.allocate(need)
            if not seq.admitted_once:
                seq.admitted_once = True
                seq.num_cached_tokens = match.num_tokens
                self.counters.prompt_tokens += seq.num_prompt_tokens
                self.counters.cached_tokens += match.num_tokens
            waiting.remove(seq)
            insert_by_priority(running, seq)
            runs.append(seq, n)
            budget -= n
            room -= size + PLAN_ENTRY_BYTES
            self._note_prompt_being_computed(seq, sharing)
        return runs

    def _waits_for_wave(self, running: list[Sequence], waiting: deque[Sequence]) -> bool:
        """Whether admission waits for a wave (SchedulerConfig.admission_wave): the batch is
        nearly full, fewer slots are free than the wave (or the queue) holds, and the first
        waiting request has waited fewer steps than the wave size and outranks no running one."""
        limit = self.config.max_running_requests
        wave = min(self.config.admission_wave, limit // 16)
        if wave <= 1 or not running or limit - len(running) >= min(wave, len(waiting)):
            return False
        head = waiting[0]
        return head.priority <= running[-1].priority and self.wait_steps(head) < wave

    def _room_for_admission(self, running: list[Sequence], need: int, match: PrefixMatch) -> bool:
        """Whether need blocks (besides match's) can be allocated, after preempting held-back
        running requests (their blocks go to the tree: evictable, and theirs again on resume)."""
        while not self.kv.can_allocate(need, match):
            victim = self._held_back_victim(running)
            if victim is None or self._covered(need, match):
                return False
            running.remove(victim)
            self._evict(victim)
        return True

    def _free_slot(self, running: list[Sequence], waiting: deque[Sequence]) -> bool:
        """Preempts the newest held-back running request when a request that can run waits for
        its slot (max_running_requests reached); whether one was."""
        victim = self._held_back_victim(running)
        if victim is None:
            return False
        if all(self._is_behind(s) for s in waiting):
            return False
        running.remove(victim)
        self._preempt(victim)
        return True

    def _admission_order(self, waiting: deque[Sequence]) -> list[Sequence]:
        """By priority (highest first); within one, resumed and overdue requests (in queue
        order), then the rest by longest cached prefix (ties in queue order)."""
        window = list(itertools.islice(waiting, self.config.prefix_scan_window))
        limit = self.config.max_wait_steps
        by_prefix = self.config.enable_prefix_cache and len(window) > 1

        def rank(seq: Sequence) -> tuple[int, bool, int]:
            urgent = seq.admitted_once or self.wait_steps(seq) > limit
            hit = 0 if urgent or not by_prefix else self._hit_estimate(seq)
            return (-seq.priority, not urgent, -hit)

        return sorted(window, key=rank)  # stable: queue order breaks ties

    def _prompts_being_computed(self, running: list[Sequence]) -> dict[tuple, list[Sequence]]:
        """Running requests whose prompt blocks are not all in the tree yet, by first block."""
        found: dict[tuple, list[Sequence]] = {}
        for seq in running:
            self._note_prompt_being_computed(seq, found)
        return found

    def _note_prompt_being_computed(
        self, seq: Sequence, found: dict[tuple, list[Sequence]]
    ) -> None:
        bs = self.block_size
        assert seq.match is not None
        if (
            self.config.enable_prefix_cache
            and seq.match.num_tokens < seq.num_prompt_tokens // bs * bs
        ):
            found.setdefault(first_block_key(seq, bs), []).append(seq)

    def _waits_for_leader(self, seq: Sequence) -> bool:
        """Whether seq, a later completion of a request (engine/completions.py), waits for
        completion 0, unfinished on this worker, to put the prompt's full blocks in the tree:
        it then hits them all and computes only the prompt's last, partial block."""
        leader = seq.leader
        assert leader is not None
        if not self.config.enable_prefix_cache or seq.admitted_once or leader.is_finished:
            return False
        if leader.worker_address != seq.worker_address:  # moved (a lost worker): it goes alone
            return False
        full = (len(seq.token_ids) - 1) // self.block_size * self.block_size
        return self._hit_estimate(seq) < full

    def _hit_estimate(self, seq: Sequence) -> int:
        """seq's cached prefix length for ordering, recomputed only when blocks entered the tree
        under its first block, or any were evicted (a match costs O(prompt); admission matches
        anew)."""
        state = self.hit_epochs.state(first_block_key(seq, self.block_size), self.kv.tree)
        if seq.hit_estimate[0] != state:
            seq.hit_estimate = (state, self._match(seq).num_tokens)
        return seq.hit_estimate[1]

    def _match(self, seq: Sequence) -> PrefixMatch:
        """Cached prefix of all but the last known token: the hit is then a whole number of
        blocks short of the tokens, so at least one token runs and yields logits."""
        namespace = seq.request.namespace
        if not self.config.enable_prefix_cache:
            return self.kv.match_prefix([], namespace)
        return self.kv.match_prefix(seq.token_ids[:-1], namespace)

    def _num_blocks(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

"""Routing new requests between workers: longest cached prefix, weighed against each load.

A worker's radix tree only holds prompts already computed, so a burst of requests sharing a
prefix would look uncached everywhere and be spread by load alone, computing the prefix on
every worker. Each worker therefore also gets a PrefixIndex of the prompts routed to it (block
hashes, LRU-bounded): a request follows its prefix to the worker that has it or will have it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from collections.abc import Sequence as Tokens

from yaie.scheduler_service.engine.sequence import Sequence
from yaie.scheduler_service.engine.worker_loop import WorkerLoop


class PrefixIndex:
    """Whole-block prefixes of the prompts routed to one worker, as chained block hashes."""

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size = block_size
        self.capacity = capacity  # most block hashes kept (the least recently routed go first)
        self._hashes: OrderedDict[int, None] = OrderedDict()

    def _chain(self, tokens: Tokens[int], namespace: str) -> Iterator[int]:
        h = hash(namespace)
        bs = self.block_size
        for start in range(0, len(tokens) // bs * bs, bs):
            h = hash((h, tuple(tokens[start : start + bs])))
            yield h

    def match(self, tokens: Tokens[int], namespace: str) -> int:
        """Tokens of the longest routed prefix of tokens (whole blocks)."""
        num_blocks = 0
        for h in self._chain(tokens, namespace):
            if h not in self._hashes:
                break
            num_blocks += 1
        return num_blocks * self.block_size

    def insert(self, tokens: Tokens[int], namespace: str) -> None:
        for h in self._chain(tokens, namespace):
            self._hashes[h] = None
            self._hashes.move_to_end(h)
        while len(self._hashes) > self.capacity:
            self._hashes.popitem(last=False)


class Router:
    """Picks a worker per request: the least cost, where cost = prompt tokens the worker must
    compute (the prompt minus its cached or routed prefix) + tokens already waiting or running
    there. A prefix hit thus wins while it saves more than the load difference costs, and an
    idle worker takes a request as soon as another's queue outweighs the hit."""

    def __init__(self, enable_prefix_cache: bool) -> None:
        self.enable_prefix_cache = enable_prefix_cache
        self._indexes: dict[int, tuple[int, PrefixIndex]] = {}  # id(loop) -> (losses, index)

    def _index(self, loop: WorkerLoop) -> PrefixIndex:
        """loop's index; a new one after the worker was lost (its cache went with it)."""
        losses, index = self._indexes.get(id(loop), (-1, None))
        if index is None or losses != loop.num_losses:
            index = PrefixIndex(loop.kv.block_size, 2 * loop.kv.num_blocks)
            self._indexes[id(loop)] = (loop.num_losses, index)
        return index

    def pick(
        self, seq: Sequence, candidates: list[WorkerLoop], prefer: WorkerLoop | None = None
    ) -> WorkerLoop:
        """One of candidates (healthy workers whose pool fits seq; non-empty) for seq; records
        seq's prefix there. prefer, when a candidate, is taken (the worker that computes the
        prompt of seq's request for all its completions)."""
        tokens = seq.token_ids[:-1]  # at least the last token runs (as the policy matches)
        namespace = seq.request.namespace
        if prefer is not None and prefer in candidates:
            seq.route_cost = len(seq.token_ids) - self._hit(prefer, tokens, namespace)
            return prefer
        best: tuple[int, int, int] | None = None
        chosen, chosen_miss = candidates[0], len(seq.token_ids)
        # One candidate needs no score (the load sums over the queue: O(queue) per request).
        for rank, loop in enumerate(candidates if len(candidates) > 1 else ()):
            miss = len(seq.token_ids) - self._hit(loop, tokens, namespace)
            load = loop.load_tokens()
            key = (miss + load, load, rank)
            if best is None or key < best:
                best, chosen, chosen_miss = key, loop, miss
        if self.enable_prefix_cache:
            self._index(chosen).insert(tokens, namespace)
        seq.route_cost = chosen_miss
        return chosen

    def _hit(self, loop: WorkerLoop, tokens: list[int], namespace: str) -> int:
        """Prompt tokens loop has cached, or will have once its queue ran (its index)."""
        if not self.enable_prefix_cache:
            return 0
        cached = loop.kv.cached_tokens(tokens, namespace)  # read-only: no LRU touch
        return max(cached, self._index(loop).match(tokens, namespace))

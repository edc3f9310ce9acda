"""Property test of the KV cache manager (radix tree + block manager) against a shadow model.

A seeded random run of >= 100,000 operations over 2-4 token ids (deep sharing) with the
integrity check after every one; the shadow predicts every match exactly.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from yaie.kernels.cache import KVCacheManager, OutOfBlocksError, PrefixMatch

NAMESPACES = ("", "tenant")


@dataclass
class _Request:
    tokens: list[int]  # K/V written
    blocks: list[int]
    match: PrefixMatch
    namespace: str


@dataclass
class _Shadow:
    """What the cache must hold, kept by the test alone."""

    block_size: int
    content: dict[int, tuple[int, ...]] = field(default_factory=dict)  # live block -> its tokens
    cached: dict[tuple, int] = field(default_factory=dict)  # (namespace, prefix) -> block id
    key_of: dict[int, tuple] = field(default_factory=dict)  # cached block id -> its key
    locks: Counter = field(default_factory=Counter)  # block id -> live locks on it

    def expected_match(self, tokens: list[int], namespace: str) -> list[int]:
        bs, blocks = self.block_size, []
        for end in range(bs, len(tokens) + 1, bs):
            block = self.cached.get((namespace, tuple(tokens[:end])))
            if block is None:
                break
            blocks.append(block)
        return blocks


class _Run:
    """One random run: each op_* method does one operation and checks it."""

    def __init__(self, seed: int, num_blocks: int, block_size: int, vocab: int) -> None:
        self.rng = random.Random(seed)
        self.cache = KVCacheManager(num_blocks, block_size)
        self.shadow = _Shadow(block_size)
        self.bs, self.vocab = block_size, vocab
        self.requests: list[_Request] = []
        self.holders: list[PrefixMatch] = []  # extra locks, as a second sharer would take
        self.scratch: list[list[int]] = []  # private blocks outside any request
        self.history: list[list[int]] = [[]]  # earlier token lists, to draw shared prefixes
        self.evictions = 0

    def random_tokens(self) -> list[int]:
        base = self.rng.choice(self.history)
        head = base[: self.rng.randint(0, len(base))]
        tail = [self.rng.randrange(self.vocab) for _ in range(self.rng.randint(0, 2 * self.bs + 1))]
        return head + tail

    def checked_match(self, tokens: list[int], namespace: str) -> PrefixMatch:
        peeked = self.cache.cached_tokens(tokens, namespace)  # read-only: the match below agrees
        match = self.cache.match_prefix(tokens, namespace)
        assert peeked == match.num_tokens
        assert match.blocks == self.shadow.expected_match(tokens, namespace)
        assert match.num_tokens == len(match.blocks) * self.bs <= len(tokens)
        for i, block in enumerate(match.blocks):  # a matched block holds exactly the query's tokens
            assert self.shadow.content[block] == tuple(tokens[i * self.bs : (i + 1) * self.bs])
        return match

    def lock(self, match: PrefixMatch) -> None:
        self.cache.lock(match)
        self.shadow.locks.update(match.blocks)

    def unlock_shadow(self, match: PrefixMatch) -> None:
        self.shadow.locks.subtract(match.blocks)

    def allocate(self, n: int) -> list[int]:
        """cache.allocate, checking that it only reuses free or just-evicted blocks."""
        blocks = self.cache.allocate(n)
        evicted = self.sync_cached()
        for block in blocks:
            assert block not in self.shadow.content or block in evicted, f"{block} is live"
            self.shadow.content[block] = ()
        return blocks

    def sync_cached(self) -> set[int]:
        """After an op that changes the tree: it holds exactly the shadow's blocks, less those
        evicted (dropped from the shadow here; none of them locked). Returns the evicted."""
        real = set(self.cache.tree.cached_block_ids())
        evicted = set(self.shadow.key_of) - real
        assert real <= set(self.shadow.key_of), "the tree holds a block nobody inserted"
        for block in evicted:
            assert self.shadow.locks[block] == 0, f"evicted locked block {block}"
            del self.shadow.cached[self.shadow.key_of.pop(block)]
            del self.shadow.content[block]
        if evicted:  # only leaves go: every cached prefix still has its parent prefix cached
            self.evictions += len(evicted)
            for namespace, prefix in self.shadow.cached:
                parent = prefix[: -self.bs]
                assert not parent or (namespace, parent) in self.shadow.cached
        return evicted

    def predict_insert(self, request: _Request) -> None:
        """The tree takes the request's block for each full-block prefix it does not hold."""
        for end in range(self.bs, len(request.tokens) + 1, self.bs):
            key = (request.namespace, tuple(request.tokens[:end]))
            if key not in self.shadow.cached:
                self.shadow.cached[key] = request.blocks[end // self.bs - 1]
                self.shadow.key_of[self.shadow.cached[key]] = key

    def write(self, request: _Request, new_tokens: list[int]) -> None:
        for token in new_tokens:
            block = request.blocks[len(request.tokens) // self.bs]
            assert block not in self.shadow.key_of, "writing into a cached block"
            self.shadow.content[block] += (token,)
            request.tokens.append(token)

    def op_admit(self) -> None:
        tokens, namespace = self.random_tokens(), self.rng.choice(NAMESPACES)
        match = self.checked_match(tokens, namespace)
        need = math.ceil(len(tokens) / self.bs) - len(match.blocks)
        if not self.cache.can_allocate(need, match):
            if not self.cache.can_allocate(need):
                with pytest.raises(OutOfBlocksError):
                    self.cache.allocate(need)
            return
        self.lock(match)
        blocks = match.blocks + self.allocate(need)
        request = _Request(tokens[: match.num_tokens], blocks, match, namespace)
        self.write(request, tokens[match.num_tokens :])
        self.requests.append(request)
        self.history = (self.history + [tokens])[-6:]

    def op_decode(self) -> None:
        request = self.rng.choice(self.requests)
        new = [self.rng.randrange(self.vocab) for _ in range(self.rng.randint(1, self.bs + 1))]
        need = math.ceil((len(request.tokens) + len(new)) / self.bs) - len(request.blocks)
        if self.cache.can_allocate(need):
            request.blocks += self.allocate(need)
            self.write(request, new)

    def op_release(self, cache: bool) -> None:
        request = self.requests.pop(self.rng.randrange(len(self.requests)))
        shadow = self.shadow
        if cache:
            self.predict_insert(request)
        self.cache.release(request.tokens, request.blocks, request.match, request.namespace, cache)
        self.sync_cached()
        self.unlock_shadow(request.match)
        for block in request.blocks:
            if block not in shadow.key_of:  # private or a duplicate: freed
                assert self.cache.blocks.ref_count(block) == 0
                del shadow.content[block]
        match = request.match
        owned = [
            i < len(match.blocks) and match.blocks[i] == b for i, b in enumerate(request.blocks)
        ]
        if not all(owned) or (match.blocks and shadow.locks[match.blocks[-1]] == 0):
            with pytest.raises(ValueError):  # a second release is refused
                self.cache.release(request.tokens, request.blocks, request.match)
        self.history = (self.history + [request.tokens])[-6:]

    def op_cache_running(self) -> None:
        request = self.rng.choice(self.requests)
        old = request.match
        self.predict_insert(request)
        args = (request.tokens, request.blocks, old, request.namespace)
        request.match = self.cache.cache_running(*args)
        self.sync_cached()
        assert request.match.blocks == self.shadow.expected_match(request.tokens, request.namespace)
        assert request.match.num_tokens == len(request.tokens) // self.bs * self.bs
        self.shadow.locks.update(request.match.blocks)
        self.unlock_shadow(old)

    def op_hold(self) -> None:
        if self.holders and self.rng.random() < 0.5:
            match = self.holders.pop(self.rng.randrange(len(self.holders)))
            self.cache.unlock(match)
            self.unlock_shadow(match)
            if match.blocks and self.shadow.locks[match.blocks[-1]] == 0:
                with pytest.raises(ValueError):  # no lock left to undo
                    self.cache.unlock(match)
        else:
            match = self.checked_match(self.random_tokens(), self.rng.choice(NAMESPACES))
            self.lock(match)
            self.holders.append(match)

    def op_scratch(self) -> None:
        if self.scratch and self.rng.random() < 0.5:
            blocks = self.scratch.pop()
            self.cache.free(blocks)
            for block in blocks:
                del self.shadow.content[block]
        elif self.cache.can_allocate(n := self.rng.randint(0, 3)):
            self.scratch.append(self.allocate(n))

    def op_evict(self) -> None:
        n, evictable = self.rng.randint(0, 6), self.cache.stats().cached_blocks
        assert self.cache.evict(n) == min(n, evictable)
        self.sync_cached()

    def op_bad_free(self) -> None:
        if self.shadow.key_of:  # a cached block is not the caller's to free
            with pytest.raises(ValueError):
                self.cache.free([self.rng.choice(list(self.shadow.key_of))])

    def step(self) -> str:
        ops = ["admit", "match", "hold", "scratch", "evict", "bad_free"]
        weights = [18, 8, 6, 6, 4, 1]
        if self.requests:
            ops += ["decode", "finish", "abort", "cache_running"]
            weights += [30, 10 + len(self.requests), 4, 4]
        op = self.rng.choices(ops, weights)[0]
        if op == "match":
            self.checked_match(self.random_tokens(), self.rng.choice(NAMESPACES))
        elif op in ("finish", "abort"):
            self.op_release(cache=op == "finish")
        else:
            getattr(self, f"op_{op}")()
        return op


@pytest.mark.parametrize(
    ("seed", "num_ops", "block_size", "vocab"),
    [(0, 100_000, 2, 3), (1, 6_000, 1, 2), (2, 6_000, 4, 2), (3, 6_000, 4, 4)],
)
def test_random_operations_keep_integrity_and_exact_matches(seed, num_ops, block_size, vocab):
    """Invariant: after every operation the cache is consistent, matches equal the shadow's
    prediction (blocks holding exactly the query's tokens), and eviction spares locked blocks."""
    run = _Run(seed, num_blocks=64, block_size=block_size, vocab=vocab)
    done = Counter()
    for _ in range(num_ops):
        done[run.step()] += 1
        run.cache.check_integrity()
        assert run.cache.tree.num_cached_blocks == len(run.shadow.key_of)  # sets: sync_cached
    stats = run.cache.stats()
    assert stats.hit_tokens > 0 and run.evictions > 0  # the run did share and evict
    assert done["finish"] > 1000 * num_ops // 100_000 and done["cache_running"] > 100

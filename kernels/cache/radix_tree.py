"""Radix tree from token prefixes to KV block ids, at block granularity (only full blocks).

Requests whose prompts share a prefix share its cached blocks; unreferenced leaves are evicted in
least-recently-used order. Pure Python: imports without torch.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(eq=False, repr=False, slots=True)
class _Node:
    """A run of whole blocks: `key` holds the len(blocks) * block_size tokens they cache."""

    key: tuple[int, ...]
    blocks: list[int]
    parent: _Node | None
    namespace: str
    children: dict[tuple, _Node] = field(default_factory=dict)
    lock_ref: int = 0  # live locks on this node or on a descendant
    last_access: int = 0  # LRU clock value
    evicted: bool = False


@dataclass
class PrefixMatch:
    """The longest cached prefix of a query.

    blocks cover exactly the first num_tokens (== len(blocks) * block_size) query tokens; node is
    an opaque handle for lock/unlock, valid until its blocks are evicted (so lock it at once).
    """

    blocks: list[int]
    num_tokens: int
    node: object = field(repr=False, compare=False)
    num_query_tokens: int = 0  # len(tokens) asked for: the denominator of the hit rate


class RadixTree:
    """Maps (namespace, token prefix) -> block ids of its full blocks; children of the root are
    keyed by namespace, so tenants never match each other's blocks."""

    def __init__(self, block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._root = _Node((), [], None, "")
        self._clock = itertools.count(1)  # LRU time: a larger value is more recent
        # Lazy LRU heap of (last_access, tie-break, node): every evictable leaf has an entry
        # with its current last_access; entries that no longer match are skipped when popped.
        self._lru: list[tuple[int, int, _Node]] = []
        self._tie = itertools.count()
        self.num_cached_blocks = 0
        self.num_locked_blocks = 0  # in nodes with lock_ref > 0
        self.num_evicted_blocks = 0  # over the tree's life (a cached match may have shrunk)
        self.hit_tokens = 0  # over every match_prefix call
        self.query_tokens = 0

    @property
    def num_evictable_blocks(self) -> int:
        """Cached blocks no live request holds: all of them can be evicted (leaves first)."""
        return self.num_cached_blocks - self.num_locked_blocks

    def match_prefix(self, tokens: Sequence[int], namespace: str = "") -> PrefixMatch:
        """Longest cached prefix of tokens, in whole blocks, compared token by token.

        Touches the LRU time of the matched path; may split a node so the match ends on a node
        boundary. Takes no lock.
        """
        toks = self._full_blocks(tokens)
        node, num_tokens = self._descend(toks, namespace)
        self.query_tokens += len(tokens)
        self.hit_tokens += num_tokens
        return PrefixMatch(self.path_blocks(node), num_tokens, node, len(tokens))

    def cached_tokens(self, tokens: Sequence[int], namespace: str = "") -> int:
        """How many tokens match_prefix(tokens) would match, read-only: no LRU touch, no split,
        not counted in the hit statistics (to score where a request could go)."""
        toks = self._full_blocks(tokens)
        return sum(n for _, n in self._walk(toks, namespace)) * self.block_size

    def insert(self, tokens: Sequence[int], blocks: Sequence[int], namespace: str = "") -> int:
        """Cache the full blocks of tokens, blocks[i] holding tokens[i*bs:(i+1)*bs].

        Needs len(blocks) >= len(tokens) // block_size; a partial tail block is ignored. Returns
        how many leading blocks were already cached: the tree keeps its own ids for those and the
        caller keeps (and frees) its own blocks there; blocks after them now belong to the tree.
        """
        return self.insert_and_match(tokens, blocks, namespace)[1]

    def insert_and_match(
        self, tokens: Sequence[int], blocks: Sequence[int], namespace: str = ""
    ) -> tuple[PrefixMatch, int]:
        """insert(), also returning the (unlocked) match of all the full blocks of tokens."""
        bs = self.block_size
        num_full = len(tokens) // bs
        if len(blocks) < num_full:
            raise ValueError(f"{len(tokens)} tokens fill {num_full} blocks; got {len(blocks)}")
        toks = self._full_blocks(tokens)
        node, pos = self._descend(toks, namespace)
        present = pos // bs
        if present < num_full:
            leaf = _Node(toks[pos:], list(blocks[present:num_full]), node, namespace)
            leaf.last_access = next(self._clock)
            node.children[self._child_key(node, toks, pos, namespace)] = leaf
            self._offer(leaf)
            self.num_cached_blocks += num_full - present
            node = leaf
        return PrefixMatch(self.path_blocks(node), num_full * bs, node), present

    def lock(self, node: object) -> None:
        """Protect node and its ancestors from eviction (a reference count up to the root)."""
        assert isinstance(node, _Node)
        if node.evicted:
            raise ValueError("stale match: its blocks were evicted; lock right after match_prefix")
        while node is not self._root:
            if node.lock_ref == 0:
                self.num_locked_blocks += len(node.blocks)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: object) -> None:
        """Undo one lock(node)."""
        assert isinstance(node, _Node)
        if node is not self._root and node.lock_ref <= 0:
            raise ValueError("unlock of a match that is not locked")
        while node is not self._root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.num_locked_blocks -= len(node.blocks)
                self._offer(node)
            node = node.parent

    def is_locked(self, node: object) -> bool:
        """Whether node is held by some lock (the root, the empty match, always is)."""
        assert isinstance(node, _Node)
        return node is self._root or node.lock_ref > 0

    def evict(self, num_blocks: int) -> list[int]:
        """Remove up to num_blocks unlocked blocks, least recently used leaves first (a parent
        left childless becomes a candidate); returns their ids for the caller to free.

        Only the tail of a long leaf goes when fewer blocks are needed. Never touches a locked node.
        """
        freed: list[int] = []
        while self._lru and len(freed) < num_blocks:
            last_access, _, leaf = heapq.heappop(self._lru)
            if leaf.last_access != last_access or leaf.evicted or not self._evictable_leaf(leaf):
                continue  # a stale entry
            extra = len(leaf.blocks) - (num_blocks - len(freed))
            if extra > 0:
                self._split(leaf, extra)  # keep the leading blocks cached
            parent = leaf.parent
            del parent.children[self._child_key(parent, leaf.key, 0, leaf.namespace)]
            leaf.evicted = True
            self.num_cached_blocks -= len(leaf.blocks)
            self.num_evicted_blocks += len(leaf.blocks)
            freed.extend(leaf.blocks)
            self._offer(parent)
        return freed

    def num_unlocked_blocks(self, node: object) -> int:
        """Blocks on the path to node that lock(node) would take out of the evictable count."""
        assert isinstance(node, _Node)
        count = 0
        while node is not self._root:
            count += len(node.blocks) if node.lock_ref == 0 or node.evicted else 0
            node = node.parent
        return count

    def holds_prefix(self, node: object, tokens: Sequence[int], namespace: str) -> bool:
        """Whether node is live and its path is (namespace, a prefix of tokens)."""
        assert isinstance(node, _Node)
        if node is self._root:
            return True
        path = self.path_tokens(node)
        same = node.namespace == namespace and tuple(tokens[: len(path)]) == path
        return not node.evicted and same

    def path_blocks(self, node: object) -> list[int]:
        """Block ids from the root down to node."""
        return [block for part in self._path(node) for block in part.blocks]

    def path_tokens(self, node: object) -> tuple[int, ...]:
        """Tokens from the root down to node."""
        return tuple(itertools.chain.from_iterable(part.key for part in self._path(node)))

    def cached_block_ids(self) -> list[int]:
        """Every block id the tree holds (locked or not)."""
        return [block for node in self._nodes() for block in node.blocks]

    def check_integrity(self) -> set[int]:
        """O(nodes): links, keys, sizes, lock counts and counters agree; no block cached twice.
        Raises AssertionError naming the node (by its depth in tokens); returns the cached ids."""
        bs, root, seen, cached, locked = self.block_size, self._root, set(), 0, 0
        assert not root.blocks and root.lock_ref == 0, "the root holds blocks or locks"
        in_lru = {id(n) for access, _, n in self._lru if access == n.last_access}
        for node in self._nodes():
            if node is root:
                continue
            below = sum(c.lock_ref for c in node.children.values()) if node.children else 0
            parent, n = node.parent, len(node.blocks)
            key = (node.namespace, node.key[:bs]) if parent is root else node.key[:bs]
            assert parent.children.get(key) is node, f"{self._where(node)}: bad link or key"
            assert n and len(node.key) == n * bs, f"{self._where(node)}: {n} blocks, bad key"
            same_ns = parent is root or node.namespace == parent.namespace
            assert same_ns and not node.evicted, f"{self._where(node)}: namespace or evicted"
            assert node.lock_ref >= below >= 0, f"{self._where(node)}: lock_ref < children's"
            if not node.children and not node.lock_ref:
                assert id(node) in in_lru, f"{self._where(node)}: evictable, not in the LRU heap"
            seen.update(node.blocks)
            cached += n
            locked += n if node.lock_ref else 0
        assert len(seen) == cached, f"{cached - len(seen)} block ids are cached twice"
        counted = (self.num_cached_blocks, self.num_locked_blocks)
        assert (cached, locked) == counted, f"{cached} cached, {locked} locked; counted {counted}"
        return seen

    def _where(self, node: _Node) -> str:
        return f"node {node.namespace!r} at {len(self.path_tokens(node))} tokens"

    def _full_blocks(self, tokens: Sequence[int]) -> tuple[int, ...]:
        toks = tuple(tokens)
        return toks[: len(toks) // self.block_size * self.block_size]

    def _child_key(self, parent: _Node, toks: tuple, pos: int, namespace: str) -> tuple:
        first = toks[pos : pos + self.block_size]
        return (namespace, first) if parent is self._root else first

    def _descend(self, toks: tuple[int, ...], namespace: str) -> tuple[_Node, int]:
        """Follow whole blocks of toks from the root, splitting the last node so the path ends
        on a node boundary; touches the path. Returns (end node, tokens matched)."""
        now = next(self._clock)
        node, pos = self._root, 0
        for child, n in self._walk(toks, namespace):
            if n < len(child.blocks):
                child = self._split(child, n)
            child.last_access = now
            self._offer(child)
            node, pos = child, pos + n * self.block_size
        return node, pos

    def _walk(self, toks: tuple[int, ...], namespace: str) -> Iterator[tuple[_Node, int]]:
        """The nodes toks follows from the root, each with how many of its blocks match (all
        but maybe the last node's); read-only."""
        node, pos = self._root, 0
        while pos < len(toks):
            child = node.children.get(self._child_key(node, toks, pos, namespace))
            if child is None:
                return
            n = self._blocks_in_common(child, toks, pos)
            partial = n < len(child.blocks)  # decided before the caller may split child
            yield child, n
            if partial:
                return
            node, pos = child, pos + n * self.block_size

    def _blocks_in_common(self, child: _Node, toks: tuple[int, ...], pos: int) -> int:
        """Leading blocks of child equal to toks[pos:] (>= 1: the child's key matched the first)."""
        bs, n = self.block_size, 1
        limit = min(len(child.blocks), (len(toks) - pos) // bs)
        if child.key[: limit * bs] == toks[pos : pos + limit * bs]:
            return limit  # (the common case, one comparison in C: the whole run matches)
        while n < limit:
            start = n * bs
            if child.key[start : start + bs] != toks[pos + start : pos + start + bs]:
                break
            n += 1
        return n

    def _split(self, node: _Node, n: int) -> _Node:
        """Move node's first n blocks into a new parent (returned); node keeps the rest, so a
        handle to node still ends where it did."""
        bs, parent = self.block_size, node.parent
        top = _Node(node.key[: n * bs], node.blocks[:n], parent, node.namespace)
        top.lock_ref, top.last_access = node.lock_ref, node.last_access
        parent.children[self._child_key(parent, node.key, 0, node.namespace)] = top
        node.key, node.blocks, node.parent = node.key[n * bs :], node.blocks[n:], top
        top.children[node.key[:bs]] = node
        return top

    def _evictable_leaf(self, node: _Node) -> bool:
        return node is not self._root and not node.children and node.lock_ref == 0

    def _offer(self, node: _Node) -> None:
        """Give node an LRU entry if it is an evictable leaf (rebuilding a heap gone stale)."""
        if not self._evictable_leaf(node):
            return
        if len(self._lru) > 4 * self.num_cached_blocks + 64:
            self._lru = [(n.last_access, next(self._tie), n) for n in self._leaves()]
            heapq.heapify(self._lru)
        heapq.heappush(self._lru, (node.last_access, next(self._tie), node))

    def _leaves(self) -> list[_Node]:
        return [node for node in self._nodes() if self._evictable_leaf(node)]

    def _path(self, node: _Node) -> list[_Node]:
        path = []
        while node is not self._root:
            path.append(node)
            node = node.parent
        return path[::-1]

    def _nodes(self) -> list[_Node]:
        nodes = [self._root]
        for node in nodes:  # breadth-first: the list grows while we walk it
            nodes.extend(node.children.values())
        return nodes

"""The run entries the policy forms for one step (which requests compute how many tokens),
kept as two columns: they are built for every row of every step, so no object per entry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from yaie.scheduler_service.engine.sequence import Sequence


@dataclass(frozen=True, slots=True)
class Run:
    """One run entry (a view of a row of Runs): compute num_tokens of seq."""

    seq: Sequence
    num_tokens: int


class Runs:
    """Run entries in plan order: compute num_tokens[i] tokens of seqs[i]."""

    __slots__ = ("num_tokens", "seqs")

    def __init__(self) -> None:
        self.seqs: list[Sequence] = []
        self.num_tokens: list[int] = []

    def append(self, seq: Sequence, num_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_tokens.append(num_tokens)

    def extend(self, other: Runs) -> None:
        self.seqs += other.seqs
        self.num_tokens += other.num_tokens

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, index: int) -> Run:
        return Run(self.seqs[index], self.num_tokens[index])

    def __iter__(self) -> Iterator[Run]:
        return map(Run, self.seqs, self.num_tokens)

"""The unit type, the linearizer protocol and the token-budget windowing they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from retriever.linearize.links import LinkContext
from retriever.records import Record, Source

#: Bumped whenever any linearizer changes its output; recorded in every index manifest.
LINEARIZER_VERSION = "1"

#: Counts tokens of each string (no special tokens). The default counts whitespace words.
TokenCounter = Callable[[Sequence[str]], list[int]]


def count_words(texts: Sequence[str]) -> list[int]:
    """A model-free token counter: whitespace-separated words."""
    return [len(t.split()) for t in texts]


@dataclass(frozen=True, slots=True)
class Unit:
    """One retrievable, embeddable piece of a record.

    ``part`` is the 0-based row index for table units and the window index for text and
    infobox units (0 when the record fits in one window); knowledge-base units use 0.
    """

    record_id: str
    source: Source
    part: int
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class WindowBudget:
    """How many tokens a unit may hold, how to count them, and the link context passages carry
    (:mod:`retriever.linearize.links`; None: none)."""

    max_tokens: int = 254
    count: TokenCounter = count_words
    links: LinkContext | None = None

    def fits(self, text: str) -> bool:
        return self.count([text])[0] <= self.max_tokens

    def primed(self, texts: Sequence[str]) -> WindowBudget:
        """This budget with ``texts`` counted ahead, in one call of the counter.

        A tokenizer counts a batch far faster than the same texts one call each; a count asked
        later for exactly these texts is looked up, any other is counted as before.
        """
        if not texts:
            return self
        known = dict(zip(texts, self.count(texts), strict=True))
        count = self.count

        def lookup(batch: Sequence[str]) -> list[int]:
            found = [known.get(t) for t in batch]
            return count(batch) if None in found else found  # type: ignore[return-value]

        return replace(self, count=lookup)


class Linearizer(Protocol):
    """Turns one record of its source type into units (CompMix-IR style strings)."""

    source: Source

    def linearize(self, record: Record, budget: WindowBudget) -> list[Unit]:
        ...

    def single_window(self, record: Record) -> str | None:
        """The string whose token count decides whether ``record`` is one unit (None: the budget is
        not checked for this source); :func:`~retriever.linearize.linearize_batch` counts these ahead."""
        ...


def pack_windows(prefix: str, pieces: Sequence[str], joiner: str, budget: WindowBudget) -> list[str]:
    """Greedily pack ``pieces`` into windows of at most ``budget.max_tokens`` tokens.

    Each window is ``prefix + joiner.join(pieces_in_window)``; the prefix (the record's
    title) is repeated in every window. A single piece larger than the budget becomes a
    window of its own (the encoder truncates it).
    """
    if not pieces:
        return [prefix]
    costs = budget.count([prefix, *pieces])
    prefix_cost, piece_costs = costs[0], costs[1:]
    # A joiner usually costs about one token (a '|' or ','); spaces cost nothing.
    join_cost = budget.count([joiner.strip()])[0] if joiner.strip() else 0
    room = max(1, budget.max_tokens - prefix_cost)
    windows = _greedy(pieces, piece_costs, join_cost, room)
    if len(windows) > 1:
        # Balance: aim every window at the mean size so the last one is not a scrap.
        # The smallest room that still needs no more windows than the greedy pass.
        total = sum(piece_costs) + join_cost * (len(pieces) - 1)
        low, high = -(-total // len(windows)), room
        while low < high:
            mid = (low + high) // 2
            if len(_greedy(pieces, piece_costs, join_cost, mid)) <= len(windows):
                high = mid
            else:
                low = mid + 1
        windows = _greedy(pieces, piece_costs, join_cost, low)
    return [prefix + joiner.join(w) for w in windows]


def _greedy(pieces: Sequence[str], costs: Sequence[int], join_cost: int, room: int) -> list[list[str]]:
    windows: list[list[str]] = []
    current: list[str] = []
    used = 0
    for piece, cost in zip(pieces, costs):
        extra = cost + (join_cost if current else 0)
        if current and used + extra > room:
            windows.append(current)
            current, used, extra = [], 0, cost
        current.append(piece)
        used += extra
    windows.append(current)
    return windows

"""The pool of instruction phrasings sampled in stage 3.

The canonical phrasing of each instruction is the template in :mod:`retriever.instructions`
(the one saved with the model as its prompts and used by the index and the benchmark);
the other phrasings only add variety in training. Every source-specific phrasing names its
source so that :func:`retriever.instructions.resolve_sources` finds it, and the general
phrasings resolve to no single source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retriever.instructions import SOURCE_NAMES, general_instruction, source_instruction
from retriever.records import Source

#: Extra phrasings of the general instruction (the canonical one comes from instructions.py).
GENERAL_PHRASINGS: tuple[str, ...] = (
    "Retrieve evidence from any knowledge source that answers the question:",
    "Search all sources for passages, table rows, facts or infobox entries that answer this question:",
    "Find evidence in every knowledge source that can answer the following question:",
)

#: Extra phrasings of a source-specific instruction; ``{source}`` takes one of ``SOURCE_ALIASES``.
SOURCE_PHRASINGS: tuple[str, ...] = (
    "Retrieve evidence from {source} sources that answers the question:",
    "Using only {source} evidence, find what answers this question:",
    "Search the {source} sources for evidence that can answer the following question:",
    "Find {source} evidence for the question:",
)

#: Other names for each source type, besides ``SOURCE_NAMES`` (all matched by resolve_sources).
SOURCE_ALIASES: dict[Source, tuple[str, ...]] = {
    Source.TEXT: ("text passage", "textual"),
    Source.TABLE: ("table row", "tabular"),
    Source.KB: ("knowledge graph", "knowledge-base triple"),
    Source.INFOBOX: ("Wikipedia infobox", "info box"),
}


@dataclass(frozen=True)
class SampledInstruction:
    text: str
    source: Source | None  # None: the general instruction
    canonical: bool


class InstructionSampler:
    """Draws an instruction for a question: general or for one of its gold sources."""

    def __init__(self, general_prob: float, canonical_prob: float) -> None:
        self.general_prob = general_prob
        self.canonical_prob = canonical_prob

    def sample(self, sources: list[Source], rng: np.random.Generator, specific: bool = False) -> SampledInstruction:
        """Pick an instruction; ``sources`` are the source types that have a gold unit.

        ``specific`` always names one of ``sources`` (never the general instruction).
        """
        general = not sources or (not specific and rng.random() < self.general_prob)
        canonical = bool(rng.random() < self.canonical_prob)
        if general:
            text = general_instruction() if canonical else GENERAL_PHRASINGS[int(rng.integers(len(GENERAL_PHRASINGS)))]
            return SampledInstruction(text, None, canonical)
        source = sources[int(rng.integers(len(sources)))]
        if canonical:
            return SampledInstruction(source_instruction(source), source, True)
        names = (SOURCE_NAMES[source], *SOURCE_ALIASES[source])
        template = SOURCE_PHRASINGS[int(rng.integers(len(SOURCE_PHRASINGS)))]
        return SampledInstruction(template.format(source=names[int(rng.integers(len(names)))]), source, False)


def all_phrasings(source: Source | None) -> list[str]:
    """Every phrasing the sampler can produce for one request (used by tests and docs)."""
    if source is None:
        return [general_instruction(), *GENERAL_PHRASINGS]
    names = (SOURCE_NAMES[source], *SOURCE_ALIASES[source])
    return [source_instruction(source)] + [t.format(source=n) for t in SOURCE_PHRASINGS for n in names]

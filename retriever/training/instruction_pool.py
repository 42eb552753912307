"""The pool of instruction phrasings sampled in stage 3.

The canonical phrasing of each instruction is the template in :mod:`retriever.instructions`
(the one saved with the model as its prompts and used by the index and the benchmark);
the other phrasings only add variety in training. Every source-specific phrasing names its
source so that :func:`retriever.instructions.resolve_sources` finds it, and the general
phrasings resolve to no single source.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def __init__(self, general_prob: float, canonical_prob: float, grammar_prob: float = 0.0) -> None:
        """``grammar_prob``: share of the non-canonical phrasings drawn from the train half of the
        router's grammar (``naming_instruction("train", ...)``, ``ROUTER_UNNAMED["train"]``) instead
        of ``SOURCE_PHRASINGS`` / ``GENERAL_PHRASINGS``; 0 draws exactly as before it existed."""
        self.general_prob = general_prob
        self.canonical_prob = canonical_prob
        self.grammar_prob = grammar_prob

    def sample(self, sources: list[Source], rng: np.random.Generator, specific: bool = False) -> SampledInstruction:
        """Pick an instruction; ``sources`` are the source types that have a gold unit.

        ``specific`` always names one of ``sources`` (never the general instruction).
        """
        general = not sources or (not specific and rng.random() < self.general_prob)
        canonical = bool(rng.random() < self.canonical_prob)
        grammar = not canonical and self.grammar_prob > 0 and bool(rng.random() < self.grammar_prob)
        if general:
            if grammar:
                return SampledInstruction(_typed(rng, _pick(rng, ROUTER_UNNAMED["train"])), None, False)
            text = general_instruction() if canonical else GENERAL_PHRASINGS[int(rng.integers(len(GENERAL_PHRASINGS)))]
            return SampledInstruction(text, None, canonical)
        source = sources[int(rng.integers(len(sources)))]
        if canonical:
            return SampledInstruction(source_instruction(source), source, True)
        if grammar:
            return SampledInstruction(naming_instruction("train", [source], rng), source, False)
        names = (SOURCE_NAMES[source], *SOURCE_ALIASES[source])
        template = SOURCE_PHRASINGS[int(rng.integers(len(SOURCE_PHRASINGS)))]
        return SampledInstruction(template.format(source=names[int(rng.integers(len(names)))]), source, False)

    def counterpart(self, drawn: SampledInstruction, rng: np.random.Generator) -> SampledInstruction:
        """Another phrasing of the same request, for the phrasing-consistency term: the canonical
        phrasing when ``drawn`` is not canonical, else one of the others (drawn as :meth:`sample`
        draws them, so ``grammar_prob`` applies)."""
        if not drawn.canonical:
            text = general_instruction() if drawn.source is None else source_instruction(drawn.source)
            return SampledInstruction(text, drawn.source, True)
        other = InstructionSampler(0.0, 0.0, self.grammar_prob)
        if drawn.source is None:
            return other.sample([], rng)
        return other.sample([drawn.source], rng, specific=True)


def all_phrasings(source: Source | None) -> list[str]:
    """Every phrasing the sampler can produce for one request (used by tests and docs)."""
    if source is None:
        return [general_instruction(), *GENERAL_PHRASINGS]
    names = (SOURCE_NAMES[source], *SOURCE_ALIASES[source])
    return [source_instruction(source)] + [t.format(source=n) for t in SOURCE_PHRASINGS for n in names]


# -- the router's instruction grammar ------------------------------------------------------------
#
# Instructions the way users write them, each labelled with the set of source types it allows
# (empty: it names no source, or allows them all, so nothing is filtered). Every piece comes in two
# disjoint halves: TRAIN fits the router, DEV (held apart: its frames, source names and
# connectives never occur in training) chooses between routers and their confidence threshold.

#: What the router is trained or checked on.
ROUTER_SPLITS = ("train", "dev")

#: How users name each source type, per split (disjoint; the DEV names include the issue's own
#: examples: "written articles", "fact lists", "the summary box at the top of the Wikipedia article").
ROUTER_NAMES: dict[str, dict[Source, tuple[str, ...]]] = {
    "train": {
        Source.TEXT: ("text", "text passages", "passages", "paragraphs", "articles", "prose", "documents",
                      "free text", "Wikipedia articles", "running text", "textual sources", "news stories",
                      "plain text", "paragraph text", "news articles", "article text", "long-form text", "web pages",
                      "blog posts", "sentences", "text snippets", "unstructured text", "natural-language text",
                      "essays", "the main text of the page", "page text", "textual descriptions", "text excerpts",
                      "full text", "reports", "wiki text"),
        Source.TABLE: ("tables", "table rows", "tabular data", "spreadsheets", "data tables", "CSV files",
                       "rows and columns", "tabular sources", "statistics tables", "table data", "spreadsheet rows",
                       "data grids", "tabulated results", "league tables", "tables of figures", "Excel sheets",
                       "table entries", "the table", "rows of a table", "pivot tables", "structured tables",
                       "result tables", "timetables", "HTML tables", "columnar data", "score tables",
                       "records in a table"),
        Source.KB: ("the knowledge base", "knowledge graph", "KB triples", "Wikidata", "fact triples",
                    "subject-predicate-object facts", "knowledge-base entries", "graph facts", "RDF triples",
                    "knowledge bases", "the KG", "entity-relation triples", "facts stored as triples",
                    "semantic web data", "DBpedia facts", "a graph of entities", "triples", "entity facts",
                    "Freebase", "ontology facts", "relations between entities", "a graph database",
                    "knowledge-base facts", "subject-relation-object statements", "Wikidata statements",
                    "a knowledge base", "KG edges"),
        Source.INFOBOX: ("infoboxes", "info boxes", "Wikipedia infoboxes", "summary panels", "infobox fields",
                         "the sidebar box of a wiki page", "key-value boxes", "wiki infoboxes", "attribute boxes",
                         "profile boxes", "the box on the right of a Wikipedia page", "biography boxes", "infobox",
                         "the infobox", "side panels", "info cards", "entity cards", "the wiki sidebar",
                         "page infoboxes", "the box of key attributes", "the header box of a Wikipedia page",
                         "at-a-glance boxes", "overview boxes"),
    },
    "dev": {
        Source.TEXT: ("written articles", "plain-text paragraphs", "narrative text", "the body of the article",
                      "encyclopedia entries", "written prose", "text documents"),
        Source.TABLE: ("tabular records", "grids of rows and columns", "spreadsheet-style data", "comparison tables",
                       "table cells", "data in tabular form"),
        Source.KB: ("fact lists", "structured facts", "linked data", "the entity graph", "a triple store",
                    "knowledge-graph relations"),
        Source.INFOBOX: ("the summary box at the top of the Wikipedia article", "fact sheets", "info panels",
                         "the infobox summary", "quick-facts boxes"),
    },
}

#: Frames naming the allowed sources (``{pos}``), per split.
ROUTER_INCLUDE: dict[str, tuple[str, ...]] = {
    "train": ("use {pos} only", "only use {pos}", "search {pos}", "retrieve evidence from {pos}",
              "find the answer in {pos}", "look it up in {pos}", "answer from {pos}", "restrict the search to {pos}",
              "I want results from {pos}", "limit yourself to {pos}", "just {pos}, please",
              "the answer should come from {pos}", "check {pos}", "go through {pos}", "I'd like evidence from {pos}",
              "base your answer on {pos}", "rely on {pos}", "focus on {pos}", "search within {pos}", "{pos} only",
              "only {pos}", "query {pos}", "from {pos}", "{pos}", "search only in {pos}", "please look in {pos}",
              "can you check {pos}", "restrict yourself to {pos}", "I need evidence from {pos}",
              "take the answer from {pos}", "search through {pos}", "use nothing but {pos}", "stay within {pos}",
              "consider only {pos}", "only look at {pos}", "draw on {pos}", "find it in {pos}", "retrieve from {pos}",
              "give me {pos}", "show me results from {pos}", "evidence must come from {pos}",
              "limit the search to {pos}", "scan {pos}", "refer to {pos}", "the source is {pos}",
              "answer using {pos} alone"),
    "dev": ("use {pos} exclusively", "please consult {pos}", "get me evidence out of {pos}",
            "consult {pos} and nowhere else", "stick to {pos}", "I only trust {pos}",
            "pull the answer from {pos}", "dig through {pos}"),
}

#: Frames excluding sources (``{neg}``): everything else is allowed.
ROUTER_EXCLUDE: dict[str, tuple[str, ...]] = {
    "train": ("anything but {neg}", "everything except {neg}", "search all sources except {neg}", "no {neg}",
              "don't use {neg}", "do not search {neg}", "exclude {neg}", "skip {neg}", "leave out {neg}",
              "any source other than {neg}", "not from {neg}", "omit {neg}", "everything besides {neg}",
              "disregard {neg}", "steer clear of {neg}", "nothing from {neg}", "anything that isn't {neg}",
              "forget about {neg}", "keep {neg} out of it", "do not use {neg}", "not {neg}", "except {neg}",
              "other than {neg}", "rule out {neg}", "stay away from {neg}", "drop {neg}", "I don't want {neg}",
              "don't look at {neg}", "don't bother with {neg}", "set aside {neg}", "minus {neg}", "filter out {neg}",
              "remove {neg}", "refrain from using {neg}", "everything other than {neg}", "search everything but {neg}",
              "nothing in {neg}", "no {neg} please"),
    "dev": ("avoid {neg}", "ignore {neg}", "without {neg}", "everything apart from {neg}",
            "never {neg}", "all evidence excluding {neg}"),
}

#: Frames allowing ``{pos}`` and also ruling out ``{neg}``.
ROUTER_CONTRAST: dict[str, tuple[str, ...]] = {
    "train": ("use {pos}, not {neg}", "search {pos} rather than {neg}", "look in {pos} instead of {neg}",
              "only {pos}; no {neg}", "{pos} but not {neg}", "{pos} only, no {neg}", "focus on {pos} and skip {neg}",
              "use {pos}; do not use {neg}", "{pos} instead of {neg}", "check {pos} and disregard {neg}",
              "{pos}, not {neg}", "search {pos}; skip {neg}", "I want {pos} and not {neg}",
              "use {pos} and leave out {neg}", "choose {pos} and not {neg}", "look at {pos}, don't look at {neg}",
              "rely on {pos}, drop {neg}", "only {pos}, forget {neg}", "search {pos} but stay away from {neg}",
              "{pos}; exclude {neg}"),
    "dev": ("search {pos} (not {neg})", "consult {pos} and avoid {neg}", "prefer {pos} over {neg}, never {neg}",
            "stick to {pos}, ignore {neg}"),
}

#: How several names are joined, per split (``{a}``, ``{b}``; three names join ``{a}`` as "a, b").
ROUTER_JOINS: dict[str, tuple[str, ...]] = {
    "train": ("{a} and {b}", "{a} or {b}", "{a}, {b}", "both {a} and {b}", "{a} & {b}", "{a} along with {b}",
              "{a} together with {b}", "{a} + {b}", "{a}/{b}", "{a} or else {b}", "{a} in addition to {b}",
              "{a} and also {b}", "{a} or maybe {b}", "{a} alongside {b}"),
    "dev": ("{a} as well as {b}", "either {a} or {b}", "{a} plus {b}", "{a} and/or {b}"),
}

#: Instructions that name no source, or allow every source (label: no filter).
ROUTER_UNNAMED: dict[str, tuple[str, ...]] = {
    "train": ("answer the question", "find evidence for this question", "retrieve relevant evidence",
              "be concise", "search all sources", "any source is fine", "use every kind of source",
              "retrieve evidence from all knowledge sources", "find supporting evidence", "help me answer this",
              "what is the answer?", "search everything", "look it up", "give me the best evidence",
              "find the answer", "get evidence", "look for anything relevant", "use all the sources",
              "every source is allowed", "don't restrict the sources", "no preference for sources", "answer briefly",
              "any kind of evidence works", "search wherever you like", "use any source you have", "be thorough",
              "I need an answer", "find relevant facts", "all sources are fine", "look everywhere",
              *GENERAL_PHRASINGS),
    "dev": ("please find something relevant", "whatever source works", "consult all available sources",
            "I need evidence for the following", "dig up whatever answers this", "search broadly",
            "no restriction on sources", "check every source you have"),
}

#: Cased and punctuated the way people type.
_ENDINGS = ("", ".", "!", ":", " please.")


@dataclass(frozen=True)
class Mention:
    """Where an instruction names a source: characters ``[start, end)`` of its text, and whether
    the instruction excludes it ("anything but tables") rather than asks for it."""

    start: int
    end: int
    source: Source
    excluded: bool


@dataclass(frozen=True)
class RouterExample:
    """One labelled instruction: ``sources`` is the set it allows (empty: no filter); ``mentions``
    the names of sources in its text (what a tuned router learns to tag)."""

    text: str
    sources: frozenset[Source]
    kind: str  # "single", "multi", "negation", "unnamed"
    mentions: tuple[Mention, ...] = ()


def router_examples(split: str, n: int, seed: int) -> list[RouterExample]:
    """``n`` labelled instructions from one split's grammar, deterministic in ``seed``.

    A quarter each: one source named, several named ("tables or infoboxes"), sources excluded
    ("anything but tables", "search text (not tables)"), no source named. Exclusions of every
    source but none are left out; allowing all four sources is labelled as no filter.

    Raises:
        ValueError: an unknown split.
    """
    if split not in ROUTER_SPLITS:
        raise ValueError(f"split must be one of {', '.join(ROUTER_SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, ROUTER_SPLITS.index(split)])
    sources = list(Source)
    out: list[RouterExample] = []
    for i in range(n):
        kind = ("single", "multi", "negation", "unnamed")[i % 4]
        if kind == "unnamed":
            text, allowed = _pick(rng, ROUTER_UNNAMED[split]), frozenset[Source]()
        elif kind == "negation":
            drawn = _draw(rng, sources, int(rng.integers(1, 3)))
            if rng.random() < 0.5:
                text = _pick(rng, ROUTER_EXCLUDE[split]).format(neg=_names(rng, split, drawn, excluded=True))
                allowed = frozenset(sources) - frozenset(drawn)
            else:
                keep = _draw(rng, [s for s in sources if s not in drawn], 1)
                text = _pick(rng, ROUTER_CONTRAST[split]).format(pos=_names(rng, split, keep),
                                                               neg=_names(rng, split, drawn, excluded=True))
                allowed = frozenset(keep)
        else:
            drawn = _draw(rng, sources, 1 if kind == "single" else int(rng.integers(2, 4)))
            text = _include(rng, split, drawn)
            allowed = frozenset(drawn)
        if allowed == frozenset(sources):
            allowed = frozenset()
        plain, mentions = _unmark(text)
        out.append(RouterExample(_typed(rng, plain), allowed, kind, mentions))
    return out


def naming_instruction(split: str, sources: Sequence[Source], rng: np.random.Generator) -> str:
    """One instruction of ``split``'s grammar asking for exactly ``sources`` ("stick to tabular records.").

    Raises:
        ValueError: an unknown split, or no sources.
    """
    if split not in ROUTER_SPLITS:
        raise ValueError(f"split must be one of {', '.join(ROUTER_SPLITS)}, got {split!r}")
    if not sources:
        raise ValueError("name at least one source")
    return _typed(rng, _unmark(_include(rng, split, list(sources)))[0])


def _include(rng: np.random.Generator, split: str, sources: list[Source]) -> str:
    return _pick(rng, ROUTER_INCLUDE[split]).format(pos=_names(rng, split, sources))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _draw(rng: np.random.Generator, sources: list[Source], k: int) -> list[Source]:
    return [sources[int(i)] for i in rng.choice(len(sources), size=k, replace=False)]


#: Marks a name in a drawn instruction until :func:`_unmark` turns it into a :class:`Mention`:
#: ``\x01<source index><+|->\x02<name>\x03``.
_MARK, _NAME, _END = "\x01", "\x02", "\x03"


def _names(rng: np.random.Generator, split: str, sources: list[Source], excluded: bool = False) -> str:
    sign = "-" if excluded else "+"
    names = [f"{_MARK}{list(Source).index(s)}{sign}{_NAME}{_pick(rng, ROUTER_NAMES[split][s])}{_END}" for s in sources]
    if len(names) == 1:
        return names[0]
    return _pick(rng, ROUTER_JOINS[split]).format(a=", ".join(names[:-1]), b=names[-1])


def _unmark(marked: str) -> tuple[str, tuple[Mention, ...]]:
    """The plain text of a marked instruction and the mention of each marked name."""
    parts: list[str] = []
    mentions: list[Mention] = []
    length, i = 0, 0
    while (start := marked.find(_MARK, i)) >= 0:
        parts.append(marked[i:start])
        length += start - i
        source, sign = list(Source)[int(marked[start + 1])], marked[start + 2]
        end = marked.index(_END, start)
        name = marked[marked.index(_NAME, start) + 1:end]
        mentions.append(Mention(length, length + len(name), source, sign == "-"))
        parts.append(name)
        length += len(name)
        i = end + 1
    parts.append(marked[i:])
    return "".join(parts), tuple(mentions)


def _typed(rng: np.random.Generator, text: str) -> str:
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if text[-1] in ".!?:":
        return text
    return text + _pick(rng, _ENDINGS)

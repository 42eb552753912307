"""Instruction templates: the one place where the query-side strings live.

A query is encoded as ``instruction + question``; documents are encoded without any
instruction. The templates below are saved with a trained model as sentence-transformers
``prompts`` (keys ``query`` and ``query_<source>``) and every index manifest records the
prompts it was built with, so the index, the server and the trainer use the same strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from retriever.records import Source

#: How each source type is named inside an instruction.
SOURCE_NAMES: dict[Source, str] = {
    Source.TEXT: "text",
    Source.TABLE: "table",
    Source.KB: "knowledge base",
    Source.INFOBOX: "infobox",
}

GENERAL_TEMPLATE = (
    "Given a question, retrieve relevant evidence that can answer the question from all knowledge sources:"
)
SOURCE_TEMPLATE = "Given a question, retrieve relevant evidence that can answer the question from {source} sources:"
DOMAIN_SUFFIX = " about {domain}"

QUERY_PROMPT = "query"
DOCUMENT_PROMPT = "document"


def source_instruction(source: Source, domain: str | None = None) -> str:
    """The instruction asking for evidence of one source type (optionally within a domain)."""
    text = SOURCE_TEMPLATE.format(source=SOURCE_NAMES[source])
    return _with_domain(text, domain)


def general_instruction(domain: str | None = None) -> str:
    """The instruction asking for evidence from every source type."""
    return _with_domain(GENERAL_TEMPLATE, domain)


def _with_domain(text: str, domain: str | None) -> str:
    if not domain:
        return text
    return text[:-1] + DOMAIN_SUFFIX.format(domain=domain.strip()) + ":"


def default_prompts() -> dict[str, str]:
    """The prompts dict saved with models (sentence-transformers ``prompts``)."""
    prompts = {QUERY_PROMPT: GENERAL_TEMPLATE, DOCUMENT_PROMPT: ""}
    for source in Source:
        prompts[prompt_name(source)] = source_instruction(source)
    return prompts


def prompt_name(source: Source | None) -> str:
    """The prompts key for a source type (``query`` for the general instruction)."""
    return QUERY_PROMPT if source is None else f"{QUERY_PROMPT}_{source.value}"


def compose_query(instruction: str | None, question: str) -> str:
    """Join an instruction and a question the way the encoder saw them in training.

    The instruction is stripped; a trailing ``:`` is added when it ends with no
    punctuation, so free-text instructions read like the templates.
    """
    question = question.strip()
    if not instruction or not instruction.strip():
        return question
    instruction = instruction.strip()
    if instruction[-1] not in ":.?!":
        instruction += ":"
    return f"{instruction} {question}"


def instruction_for(prompts: Mapping[str, str], sources: Iterable[Source] | None) -> str:
    """The saved prompt for a single requested source, else the general one."""
    chosen = list(dict.fromkeys(sources or ()))
    if len(chosen) == 1 and prompt_name(chosen[0]) in prompts:
        return prompts[prompt_name(chosen[0])]
    return prompts.get(QUERY_PROMPT, "")


_SOURCE_PATTERNS: dict[Source, re.Pattern[str]] = {
    Source.TEXT: re.compile(r"\b(text|texts|textual|passages?|paragraphs?|documents?|articles?|prose)\b"),
    Source.TABLE: re.compile(r"\b(tables?|tabular|table rows?)\b"),
    Source.KB: re.compile(r"\b(kb|kbs|knowledge[- ]bases?|knowledge[- ]graphs?|kg|triples?|wikidata)\b"),
    Source.INFOBOX: re.compile(r"\b(infobox(es)?|info[- ]box(es)?)\b"),
}
_ALL_SOURCES = re.compile(r"\b(all|every|any) (knowledge )?sources?\b")


def resolve_sources(instruction: str | None) -> list[Source]:
    """Source types that an instruction names ("from tables and infoboxes" → table, infobox).

    Returns an empty list when it names none, or asks for all sources.
    """
    if not instruction:
        return []
    text = instruction.lower()
    if _ALL_SOURCES.search(text):
        return []
    return [source for source, pattern in _SOURCE_PATTERNS.items() if pattern.search(text)]

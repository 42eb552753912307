"""Follow-up questions resolved against the conversation history, before anything is encoded.

A conversational follow-up ("what film did it produce?", "and their population?") does not
name what it asks about; the encoder, which sees one string, cannot know. No language model is
available to rewrite it, so :func:`resolve` does it with rules (docs/BENCHMARKS.md,
"Conversational follow-ups", has the measurements behind each choice):

1. **Is it a follow-up?** Yes when the question has an anaphor (it, its, he, his, she, her,
   they, them, their, that one, this one, the other one) or opens with an ellipsis cue ("and",
   "what about", "how about"). Anything else is taken as standalone and searched unchanged, so
   a fresh question with its own entity is never mixed with the history.
2. **What does it refer to?** The salient spans of the most recent turn whose question has any:
   quoted titles, runs of capitalized words (inner "of", "the", "de", ... and digits allowed, a
   sentence-initial question word dropped), and years/numbers. Answers are not read: carrying
   their spans too lowered dense MRR@100 from 0.924 to 0.914 on the conversational dev set. A span
   the follow-up already contains is not carried again. When no question has one (all-lowercase
   history), the last question's content words are used.
3. **Rewrite**: the spans are appended to the follow-up ("what film did it produce? Don
   Simpson"); the anaphor stays, so a wrong guess adds words rather than deleting them.
   Substituting the span for the pronoun measured 0.933 against 0.924 (dense MRR@100), but the
   set's follow-ups were made by the inverse substitution, so part of that margin is the
   construction's; appending was kept.

Failure modes: a standalone question that happens to contain "it" or "they" gets the history's
entity appended; a follow-up that refers to the answer ("and the other one?") gets the question's
entity; lowercase entities in the history are found only through the content-word fallback; a
follow-up without an anaphor or cue ("what is the population?") is left alone.

This module imports nothing beyond the standard library and :mod:`retriever.query` (the client
and the service's validation use it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from retriever.errors import InvalidInputError
from retriever.query import Query, Turn

#: Most turns a query's history may hold (the service's limit is configured separately, see
#: ``retriever.service.config.Limits.max_history_turns``).
MAX_HISTORY_TURNS = 32

_ANAPHORS = re.compile(
    r"(?<![\w'])(it|its|he|him|his|she|her|hers|they|them|their|theirs|that one|this one|the other one)"
    r"(?:'s)?(?![\w'])",
    re.IGNORECASE)
_CUE = re.compile(r"^\s*(and|what about|how about)\b", re.IGNORECASE)
_QUOTED = re.compile(r"[\"“]([^\"”]{2,100})[\"”]")
_TOKEN = re.compile(r"[\w][\w'.\-–&]*", re.UNICODE)
#: Lowercase words allowed inside a capitalized run ("Bank of America", "Vincent van Gogh").
_JOINERS = frozenset({"of", "the", "de", "da", "del", "der", "van", "von", "la", "le", "and", "&", "for", "in", "on"})
#: Capitalized words that start questions and statements, never an entity on their own.
_OPENERS = frozenset("""what who whom whose which where when why how is are was were do does did can could
would should will tell i in on at for of the a an and or but list name give show find please hi hello
yes no ok okay also then so if this that these those it its he she they his her their there""".split())
_STOP = _OPENERS | frozenset("""me about you know have has had be been being question to from by with as
into than more most less least many much some any all each other one ones not only same such own
very just can't don't did does doesn't isn't wasn't were weren't your my our us we him them""".split())
_SENTENCE_START = re.compile(r"(^|[.?!:;]\s*)\W*$")
_NUMBER = re.compile(r"(?<![\w.])\d{1,4}(?:[.,]\d+)?(?![\w])")


@dataclass(frozen=True)
class Resolution:
    """What :func:`resolve` did to a question.

    Attributes:
        text: the text to search: the question, with the carried spans appended when it is a follow-up.
        follow_up: whether the question was taken as a follow-up.
        carried: the spans taken from the history, in the order appended (empty when none).
    """

    text: str
    follow_up: bool
    carried: tuple[str, ...] = ()


def check_history(history: Sequence[Turn], field: str = "history", max_turns: int = MAX_HISTORY_TURNS,
                  max_chars: int | None = None, settings: tuple[str, str] | None = None) -> None:
    """Validate a history: at most ``max_turns`` turns, each with a non-empty question and, when
    ``max_chars`` is given, a question and answer of at most that many characters.

    Args:
        settings: the names of the settings behind ``max_turns`` and ``max_chars``, quoted in messages.

    Raises:
        InvalidInputError: naming the turn and field (``history[2].question``) and the limit.
    """
    turns_setting, chars_setting = (f" ({name})" for name in settings) if settings else ("", "")
    if len(history) > max_turns:
        raise InvalidInputError(f"{field}: {len(history)} turns exceed the limit of {max_turns}{turns_setting}; "
                                "send the most recent turns only")
    for i, turn in enumerate(history):
        if not isinstance(turn, Turn):
            raise InvalidInputError(f"{field}[{i}]: expected a Turn(question, answer), got {type(turn).__name__}")
        if not turn.question.strip():
            raise InvalidInputError(f"{field}[{i}].question: must not be empty or whitespace")
        if max_chars is not None:
            for name, value in (("question", turn.question), ("answer", turn.answer)):
                if len(value) > max_chars:
                    raise InvalidInputError(f"{field}[{i}].{name}: {len(value)} characters exceed the limit of "
                                            f"{max_chars}{chars_setting}")


def is_follow_up(question: str) -> bool:
    """Whether ``question`` reads as a follow-up: it has an anaphor or opens with an ellipsis cue."""
    return bool(_ANAPHORS.search(question) or _CUE.search(question))


def salient_spans(text: str) -> list[str]:
    """Quoted titles, capitalized runs and numbers of ``text``, in order of appearance, no duplicates."""
    found: list[tuple[int, str]] = [(m.start(1), m.group(1).strip()) for m in _QUOTED.finditer(text)]
    quoted = [(m.start(), m.end()) for m in _QUOTED.finditer(text)]
    run: list[re.Match[str]] = []

    def close() -> None:
        while run and run[-1].group(0).lower() in _JOINERS:
            run.pop()
        if run:
            found.append((run[0].start(), text[run[0].start():run[-1].end()]))
        run.clear()

    for m in _TOKEN.finditer(text):
        word = m.group(0).rstrip(".")
        if any(a <= m.start() < b for a, b in quoted):
            close()
            continue
        capital = word[:1].isupper() or (word[:1].isdigit() and bool(run))
        opener = not run and word.lower() in _OPENERS and _SENTENCE_START.search(text[:m.start()]) is not None
        if capital and not opener and not (not run and word == "I"):
            run.append(m)
        elif run and word.lower() in _JOINERS:
            run.append(m)
        else:
            close()
    close()
    covered = [(start, start + len(span)) for start, span in found]
    for m in _NUMBER.finditer(text):
        if not any(a <= m.start() < b for a, b in covered):
            found.append((m.start(), m.group(0)))
    spans = [span.strip(" .,;:?!") for _, span in sorted(found)]
    return list(dict.fromkeys(s for s in spans if s))


def content_words(text: str) -> list[str]:
    """The words of ``text`` that are not stop words or question words, in order, no duplicates."""
    words = [m.group(0).strip(".'") for m in _TOKEN.finditer(text)]
    return list(dict.fromkeys(w for w in words if w and w.lower() not in _STOP and len(w) > 1))


def resolve(question: str, history: Sequence[Turn]) -> Resolution:
    """Resolve a follow-up question against the history (see the module docstring for the method).

    Args:
        question: the current question.
        history: earlier turns, oldest first.

    Returns:
        The text to search and what was carried; the question unchanged when there is no
        history or it does not read as a follow-up.
    """
    if not history or not is_follow_up(question):
        return Resolution(question, False)
    lower = question.lower()
    spans: list[str] = []
    for turn in reversed(history):
        spans = salient_spans(turn.question)
        if spans:
            break
    if not spans:
        spans = content_words(history[-1].question)
    carried = tuple(s for s in spans if s.lower() not in lower)
    if not carried:
        return Resolution(question, True)
    return Resolution(f"{question.rstrip()} {' '.join(carried)}", True, carried)


def rewrite(query: Query) -> str | None:
    """What :meth:`retriever.searcher.Searcher.plan` searches instead of ``query.text``: the
    resolved follow-up, or None when the query has no history or is taken as standalone.

    Raises:
        InvalidInputError: the history breaks :func:`check_history`.
    """
    if not query.history:
        return None
    check_history(query.history)
    text = resolve(query.text, query.history).text
    return None if text == query.text else text


def concatenate(question: str, history: Sequence[Turn]) -> str:
    """The baseline the resolver is measured against: every turn's question and answer, then the question."""
    parts = [p for turn in history for p in (turn.question, turn.answer) if p.strip()]
    return " ".join([*parts, question])

"""The CompMix-IR protocol: its corpus format, CompMix question sets, relevance by answer presence.

Corpus (``subset_kb_wikipedia_mixed_rd.json`` and the full 10M-evidence file): a JSON array
(or JSON Lines) of evidences ``{evidence_text, source ∈ {kb, text, table, info},
wikidata_entities: [{id, label}], disambiguations: [[mention, id]], retrieved_for_entity}``.
Evidences have no id field; an evidence's id is its 0-based position in the file. The
evidence text is linearized already, so each evidence is one unit, embedded as it is.

Questions (``train_set.json``, ``dev_set.json``, ``test_set.json``): ``{question_id, question,
domain, answers: [{id, label}], answer_src}``; ``answer_src`` is ``kb``, ``text``, ``table``,
``infobox`` (or empty).

Relevance (answer presence, as CompMix-IR defines it): an evidence is relevant to a question
when one of its ``wikidata_entities`` or disambiguated mentions matches a gold answer — by id
(normalised like CONVINSE's evaluation: lower-cased, stripped, ``"`` and ``+`` removed; so
dates match as ``1997-01-01t00:00:00z``) or by label (``\\uXXXX`` escapes decoded, case-folded,
whitespace collapsed; a mention is compared with the answer's label).

The run reuses the HeteroMix machinery: relevant evidences become the question's gold
records, ``answer_src`` its gold source, ``domain`` its dataset. Scenario 1 counts every
relevant evidence; scenario 2 asks for ``answer_src`` (or one fixed source for every question,
UniHGKR's single-source runs) and counts relevant evidences of that source only. Questions with
no answering evidence in the corpus score as misses (the full corpus), or are left out with
``only_answerable`` (corpus samples).
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import InvalidInputError, RetrieverError
from retriever.evaluation.bench import Method, command_line, prepare_out_dir, write_run_outputs
from retriever.evaluation.collection import cache_root, lexical_index
from retriever.evaluation.heteromix import DEFAULT_SCENARIOS, HeteroConfig, RunResult, run_heteromix
from retriever.evaluation.retrievers import engine_retrievers
from retriever.index import BuildConfig, Index, build_index_from_units
from retriever.index.lexical import Bm25Config
from retriever.index.store import SOURCE_CODE, UnitStore
from retriever.instructions import default_prompts
from retriever.linearize import LINEARIZER_VERSION, Unit
from retriever.query import FusionConfig
from retriever.questions import Question
from retriever.records import Source, file_fingerprint

logger = logging.getLogger(__name__)

#: CompMix-IR source names (corpus ``info``, questions ``infobox``) → the project's source types.
COMPMIX_SOURCES: dict[str, Source] = {"kb": Source.KB, "text": Source.TEXT, "table": Source.TABLE,
                                      "info": Source.INFOBOX, "infobox": Source.INFOBOX}
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def normalize_id(value: str) -> str:
    return value.lower().strip().replace('"', "").replace("+", "")


def normalize_label(value: str) -> str:
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


@dataclass(frozen=True)
class Evidence:
    id: str
    text: str
    source: Source
    entities: tuple[tuple[str, str], ...]  # (id, label)
    mentions: tuple[tuple[str, str], ...]  # (mention, id or "")

    def keys(self) -> tuple[set[str], set[str]]:
        """Normalised ids and labels this evidence offers for answer matching."""
        ids = {normalize_id(i) for i, _ in self.entities if i} | {normalize_id(i) for _, i in self.mentions if i}
        labels = {normalize_label(label) for _, label in self.entities if label}
        labels |= {normalize_label(m) for m, _ in self.mentions if m}
        ids.discard("")
        labels.discard("")
        return ids, labels


@dataclass(frozen=True)
class Answer:
    id: str
    label: str


def evidence_has_answer(evidence: Evidence, answers: Iterable[Answer]) -> bool:
    """Answer presence for one evidence (the definition; :class:`AnswerIndex` is its fast form)."""
    ids, labels = evidence.keys()
    return any((a.id and normalize_id(a.id) in ids) or (a.label and normalize_label(a.label) in labels)
               for a in answers)


class AnswerIndex:
    """Inverted index from normalised answer ids and labels to the evidences that hold them."""

    def __init__(self, evidences: Sequence[Evidence]) -> None:
        self.by_id: dict[str, list[str]] = {}
        self.by_label: dict[str, list[str]] = {}
        self.position = {e.id: i for i, e in enumerate(evidences)}
        for evidence in evidences:
            ids, labels = evidence.keys()
            for key in ids:
                self.by_id.setdefault(key, []).append(evidence.id)
            for key in labels:
                self.by_label.setdefault(key, []).append(evidence.id)

    def relevant(self, answers: Iterable[Answer]) -> list[str]:
        """Ids of the evidences holding any of ``answers``, in corpus order."""
        found: set[str] = set()
        for a in answers:
            if a.id:
                found.update(self.by_id.get(normalize_id(a.id), ()))
            if a.label:
                found.update(self.by_label.get(normalize_label(a.label), ()))
        return sorted(found, key=self.position.__getitem__)


def _load_json_records(path: Path) -> list[Any]:
    if not path.is_file():
        raise InvalidInputError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        if data.lstrip()[:1] == b"[":
            value = orjson.loads(data)
            return value if isinstance(value, list) else []
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: malformed JSON: {exc}") from None


def read_compmix_corpus(path: Path) -> list[Evidence]:
    """Read a CompMix-IR corpus file (JSON array or JSON Lines); evidence ids are positions.

    Raises:
        InvalidInputError: naming the file, the evidence position and the field.
    """
    out = []
    for i, obj in enumerate(_load_json_records(path)):
        where = f"{path}: evidence {i}"
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{where}: expected a JSON object")
        text, source = obj.get("evidence_text"), obj.get("source")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError(f"{where}: field 'evidence_text': missing or empty")
        if source not in COMPMIX_SOURCES:
            raise InvalidInputError(f"{where}: field 'source': expected one of kb, text, table, info, got {source!r}")
        entities = []
        for entity in obj.get("wikidata_entities") or ():
            if not isinstance(entity, dict):
                raise InvalidInputError(f"{where}: field 'wikidata_entities': expected objects {{id, label}}")
            entities.append((str(entity.get("id") or ""), str(entity.get("label") or "")))
        mentions = []
        for pair in obj.get("disambiguations") or ():
            if not isinstance(pair, list) or len(pair) != 2:
                raise InvalidInputError(f"{where}: field 'disambiguations': expected [mention, id] pairs")
            mentions.append((str(pair[0] or ""), str(pair[1] or "")))
        out.append(Evidence(str(i), " ".join(text.split()), COMPMIX_SOURCES[source], tuple(entities), tuple(mentions)))
    if not out:
        raise InvalidInputError(f"{path}: no evidences")
    return out


@dataclass(frozen=True)
class CompMixQuestion:
    id: str
    text: str
    domain: str
    answers: tuple[Answer, ...]
    answer_src: tuple[Source, ...]


def read_compmix_questions(path: Path, limit: int | None = None) -> list[CompMixQuestion]:
    """Read a CompMix question set (a JSON array of questions)."""
    out = []
    for i, obj in enumerate(_load_json_records(path)):
        where = f"{path}: question {i}"
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str):
            raise InvalidInputError(f"{where}: field 'question': missing")
        answers = obj.get("answers")
        if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
            raise InvalidInputError(f"{where}: field 'answers': expected a list of {{id, label}}")
        src = str(obj.get("answer_src") or "").strip()
        if src and src not in COMPMIX_SOURCES:
            raise InvalidInputError(f"{where}: field 'answer_src': unknown source {src!r}")
        out.append(CompMixQuestion(
            str(obj.get("question_id", i)), obj["question"], str(obj.get("domain") or ""),
            tuple(Answer(str(a.get("id") or ""), str(a.get("label") or "")) for a in answers),
            (COMPMIX_SOURCES[src],) if src else ()))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InvalidInputError(f"{path}: no questions")
    return out


def to_hetero_questions(questions: Sequence[CompMixQuestion], answers: AnswerIndex,
                        fixed_source: Source | None = None) -> list[Question]:
    """CompMix questions as HeteroMix questions: relevant evidences are the gold records."""
    return [Question(q.id, q.text, q.domain, (fixed_source,) if fixed_source else q.answer_src,
                           tuple(answers.relevant(q.answers)), {}, tuple(a.label for a in q.answers))
            for q in questions]


def evidence_units(evidences: Sequence[Evidence]) -> list[Unit]:
    """One unit per evidence, ordered by source (stable), as an index stores them."""
    units = [Unit(e.id, e.source, 0, "", e.text) for e in evidences]
    units.sort(key=lambda u: SOURCE_CODE[u.source])
    return units


@dataclass(frozen=True)
class CompMixBenchConfig:
    """A CompMix-IR run; see :class:`~retriever.evaluation.bench.HeteroBenchConfig` for the shared fields.

    Attributes:
        fixed_source: ask every question for this source in scenario 2 (UniHGKR's single-source
            runs) instead of its ``answer_src``.
        only_answerable: leave out questions with no answering evidence in the corpus.
    """

    corpus: Path
    questions: Path
    out: Path
    methods: tuple[Method, ...] = (Method.BM25,)
    scenarios: tuple[Any, ...] = DEFAULT_SCENARIOS
    fixed_source: Source | None = None
    only_answerable: bool = False
    cache_dir: Path | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    depth: int = 100
    results_md: Path | None = None
    limit: int | None = None
    show_progress: bool = True
    command: str = ""


@dataclass
class CompMixReport:
    runs: list[RunResult]
    store: UnitStore
    questions: int
    outputs: dict[str, Path]
    markdown: str

    def __str__(self) -> str:
        return self.markdown + "\n\n" + "\n".join(f"wrote {k}: {v}" for k, v in self.outputs.items())


def compmix_dense_index(corpus: Path, units: Sequence[Unit], encoder: Encoder, root: Path) -> Index:
    """The cached dense index of a CompMix-IR corpus (encodes it on a cache miss)."""
    import hashlib

    fingerprint = file_fingerprint(corpus)
    max_tokens = max(16, encoder.max_seq_length - 2)
    key = hashlib.sha256(f"compmix\0{fingerprint}\0{encoder.checksum}\0{LINEARIZER_VERSION}".encode()).hexdigest()
    path = root / f"compmix-{key[:20]}"
    if path.exists():
        try:
            index = Index.load(path)
            index.manifest.check_compatible(encoder.checksum, encoder.prompts, str(path))
            return index
        except RetrieverError as exc:
            logger.warning("cached index %s is unusable (%s); rebuilding", path, exc)
    counts: dict[str, int] = {}
    for u in units:
        counts[u.source.value] = counts.get(u.source.value, 0) + 1
    build_index_from_units(units, BuildConfig(corpus=corpus, out=path, overwrite=True), encoder, fingerprint,
                           counts, max_tokens)
    return Index.load(path)


def run_compmix_bench(config: CompMixBenchConfig, encoder: Encoder | None = None) -> CompMixReport:
    """Run the CompMix-IR protocol end to end and write its outputs under ``config.out``.

    ``encoder``: an already loaded encoder to use instead of loading ``config.encoder``.
    """
    started = time.perf_counter()
    prepare_out_dir(config.out)
    evidences = read_compmix_corpus(config.corpus)
    answers = AnswerIndex(evidences)
    questions = to_hetero_questions(read_compmix_questions(config.questions, config.limit), answers,
                                    config.fixed_source)
    if config.only_answerable:
        questions = [q for q in questions if q.gold]
        if not questions:
            raise InvalidInputError(f"no question of {config.questions} has an answer in {config.corpus}")
    logger.info("%d questions, %d with an answering evidence in %d evidences", len(questions),
                sum(1 for q in questions if q.gold), len(evidences))
    units = evidence_units(evidences)
    root = cache_root(config.cache_dir)
    index: Index | None = None
    if {Method.DENSE, Method.HYBRID} & set(config.methods):
        encoder = encoder or Encoder(config.encoder)
        index = compmix_dense_index(config.corpus, units, encoder, root)
        store = index.store
    else:
        encoder, store = None, UnitStore.from_units(units)
    lexical = lexical_index(store, root, config.bm25) if {Method.BM25, Method.HYBRID} & set(config.methods) else None
    retrievers = engine_retrievers(config.methods, store, index, encoder, lexical, config.fusion, config.show_progress)
    hetero = HeteroConfig(scenarios=config.scenarios, depth=config.depth, show_progress=config.show_progress,
                          score_unanswerable=not config.only_answerable)
    runs = run_heteromix(questions, store, retrievers, encoder.prompts if encoder else default_prompts(), hetero)
    description = {
        "protocol": "compmix-ir", "corpus": str(config.corpus), "questions": str(config.questions),
        "units": len(store), "methods": [m.value for m in config.methods], "group": "domain",
        "scenarios": [s.value for s in config.scenarios], "depth": config.depth, "collapse": True,
        "fixed_source": config.fixed_source.value if config.fixed_source else "",
        "only_answerable": config.only_answerable, "answerable": sum(1 for q in questions if q.gold),
        "limit": config.limit, "command": config.command or command_line(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    title = f"CompMix-IR {config.corpus.name} / {config.questions.name}"
    section = f"compmix {config.corpus.name} {config.questions.name} {'+'.join(m.value for m in config.methods)}"
    outputs, markdown = write_run_outputs(config.out, runs, store, description, title, config.results_md, section,
                                          config.depth)
    return CompMixReport(runs, store, len(questions), outputs, markdown)

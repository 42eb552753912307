"""TAT-QA routing: rank each question's own candidates; is the top-1 unit of the right source type?

Each question of ``routing.dev.jsonl`` carries its own candidates (one table, its paragraphs)
and ``answer_from`` (``table``, ``text`` or ``table-text``). Candidates are linearized with the
project's linearizers (a unit per table row; paragraphs have no title) and ranked per question:

* BM25: a BM25 index over that question's own units (so IDF comes from its candidates);
  instructions do not change a lexical query, so BM25 is run once.
* dense: cosine similarity of the query and unit embeddings (unique unit texts are encoded
  once), with three query variants: the question alone (``plain``), the general instruction
  (``general``), and the instruction naming the answer's source (``source``; both sources
  for ``table-text``).

Metrics per method and variant:

* ``routing_accuracy``: over questions whose answer is in one source type (``table`` or
  ``text``), the share whose top-1 unit has that type. ``table-text`` questions are left out:
  every candidate is a table row or a paragraph, so either type would count as right.
* ``top1_table`` per ``answer_from`` group: the share of top-1 units that are table rows.
* ``hit@1``: the top-1 unit belongs to a gold record (all questions).
* ``unranked``: questions where BM25 matched no candidate at all (counted as wrong everywhere).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retriever.encoder import Encoder, EncoderConfig
from retriever.errors import CorpusError, InvalidInputError
from retriever.evaluation.bench import Method, prepare_out_dir
from retriever.evaluation.report import replace_section, write_json
from retriever.index.lexical import Bm25Config, LexicalIndex
from retriever.instructions import SOURCE_NAMES, SOURCE_TEMPLATE, general_instruction
from retriever.linearize import Unit, WindowBudget, linearize_all
from retriever.records import Source, iter_json_lines, parse_record

logger = logging.getLogger(__name__)

ANSWER_SOURCES: dict[str, tuple[Source, ...]] = {
    "table": (Source.TABLE,),
    "text": (Source.TEXT,),
    "table-text": (Source.TABLE, Source.TEXT),
}
VARIANTS = ("plain", "general", "source")


@dataclass(frozen=True)
class RoutingQuestion:
    id: str
    text: str
    answer_from: str
    gold: frozenset[str]
    units: tuple[Unit, ...]


def read_routing(path: Path, budget: WindowBudget | None = None, limit: int | None = None) -> list[RoutingQuestion]:
    """Read ``routing.dev.jsonl`` and linearize each question's candidates.

    Raises:
        InvalidInputError: naming file, line and field of the first bad entry.
    """
    budget = budget or WindowBudget()
    out = []
    for number, obj in iter_json_lines(path):
        where = f"{path}:{number}"
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{where}: expected a JSON object")
        answer_from = obj.get("answer_from")
        if answer_from not in ANSWER_SOURCES:
            raise InvalidInputError(f"{where}: field 'answer_from': expected one of {', '.join(ANSWER_SOURCES)}, "
                                    f"got {answer_from!r}")
        candidates = obj.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            raise InvalidInputError(f"{where}: field 'candidates': expected a non-empty list")
        try:
            records = [parse_record(c, str(path), number) for c in candidates]
        except CorpusError as exc:
            raise InvalidInputError(f"{exc} (in 'candidates')") from exc
        if not isinstance(obj.get("text"), str) or not isinstance(obj.get("gold"), list):
            raise InvalidInputError(f"{where}: fields 'text' (string) and 'gold' (list) are required")
        out.append(RoutingQuestion(str(obj.get("id", number)), obj["text"], answer_from, frozenset(obj["gold"]),
                                   tuple(linearize_all(records, budget))))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InvalidInputError(f"{path}: no questions")
    return out


def routing_instruction(answer_from: str) -> str:
    sources = ANSWER_SOURCES[answer_from]
    return SOURCE_TEMPLATE.format(source=" and ".join(SOURCE_NAMES[s] for s in sources))


def bm25_top1(question: RoutingQuestion, config: Bm25Config) -> int | None:
    """Index of the best unit by BM25 over the question's own units (ties: first unit); None if none matches."""
    lexical = LexicalIndex.build([u.text for u in question.units], config)
    ids, _ = lexical.search([question.text], k=1)[0]
    return int(ids[0]) if len(ids) else None


def dense_top1(questions: Sequence[RoutingQuestion], encoder: Encoder, variant: str,
               vectors: dict[str, np.ndarray]) -> list[int | None]:
    instructions: list[str | None] = []
    for q in questions:
        if variant == "plain":
            instructions.append(None)
        elif variant == "general":
            instructions.append(general_instruction())
        else:
            instructions.append(routing_instruction(q.answer_from))
    queries = encoder.encode_queries([q.text for q in questions], instructions)
    out: list[int | None] = []
    for q, vector in zip(questions, queries, strict=True):
        units = np.stack([vectors[u.text] for u in q.units])  # [units, dim]
        scores = units @ vector  # [units]
        out.append(int(np.argmax(scores)))  # first maximum: ties go to the earlier candidate
    return out


def score(questions: Sequence[RoutingQuestion], top1: Sequence[int | None]) -> dict[str, float]:
    """Routing metrics from the top-1 unit index of each question (None: nothing ranked, counts as wrong)."""
    routed = right = hits = unranked = 0
    tables: dict[str, list[float]] = {k: [] for k in ANSWER_SOURCES}
    for q, i in zip(questions, top1, strict=True):
        unit = q.units[i] if i is not None else None
        unranked += unit is None
        hits += unit is not None and unit.record_id in q.gold
        tables[q.answer_from].append(1.0 if unit is not None and unit.source is Source.TABLE else 0.0)
        if q.answer_from in ("table", "text"):
            routed += 1
            right += unit is not None and unit.source in ANSWER_SOURCES[q.answer_from]
    out = {"n": float(len(questions)), "routing_accuracy": right / routed if routed else 0.0,
           "n_routed": float(routed), "hit@1": hits / len(questions), "unranked": float(unranked)}
    for name, values in tables.items():
        if values:
            out[f"top1_table[{name}]"] = sum(values) / len(values)
            out[f"n[{name}]"] = float(len(values))
    return out


@dataclass(frozen=True)
class RoutingBenchConfig:
    questions: Path
    out: Path
    methods: tuple[Method, ...] = (Method.BM25,)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    bm25: Bm25Config = field(default_factory=Bm25Config)
    results_md: Path | None = None
    limit: int | None = None
    show_progress: bool = True
    command: str = ""


def run_routing_bench(config: RoutingBenchConfig, encoder: Encoder | None = None) -> str:
    """Run the routing benchmark, write ``routing.json`` (+ RESULTS.md section); returns the Markdown.

    ``encoder``: an already loaded encoder to use instead of loading ``config.encoder``.
    """
    if Method.HYBRID in config.methods:
        raise InvalidInputError("routing supports bm25 and dense (rank fusion over a dozen candidates is not "
                                "part of this protocol)")
    started = time.perf_counter()
    prepare_out_dir(config.out)
    questions = read_routing(config.questions, limit=config.limit)
    results: dict[str, dict[str, float]] = {}
    if Method.BM25 in config.methods:
        progress = tqdm(questions, desc="routing bm25", disable=not config.show_progress)
        top1 = [bm25_top1(q, config.bm25) for q in progress]
        results["bm25"] = score(questions, top1)
    if Method.DENSE in config.methods:
        encoder = encoder or Encoder(config.encoder)
        texts = list(dict.fromkeys(u.text for q in questions for u in q.units))
        logger.info("encoding %d unique candidate units", len(texts))
        vectors = dict(zip(texts, encoder.encode_documents(texts, show_progress=config.show_progress), strict=True))
        for variant in VARIANTS:
            results[f"dense / {variant}"] = score(questions, dense_top1(questions, encoder, variant, vectors))
    config.out.mkdir(parents=True, exist_ok=True)
    seconds = round(time.perf_counter() - started, 1)
    write_json(config.out / "routing.json", {"protocol": "tatqa-routing", "questions": str(config.questions),
                                             "limit": config.limit, "seconds": seconds, "results": results,
                                             "command": config.command})
    markdown = routing_markdown(config, results, len(questions), seconds)
    (config.out / "routing.md").write_text(markdown + "\n", encoding="utf-8")
    if config.results_md is not None:
        replace_section(config.results_md, f"routing {config.questions.name}", markdown)
    return markdown


def routing_markdown(config: RoutingBenchConfig, results: dict[str, dict[str, float]], n: int, seconds: float) -> str:
    lines = [f"### TAT-QA routing / {config.questions.name}", ""]
    if config.command:
        lines += [f"Command: `{config.command}`", ""]
    lines += [f"{n} questions; generated in {seconds} s. Routing accuracy is over `table` and `text` questions; "
              "top-1 table share per `answer_from` group.", "",
              "| method / query | routing accuracy | hit@1 (gold record) | top-1 table [table] | top-1 table [text] "
              "| top-1 table [table-text] |", "|---|---|---|---|---|---|"]
    for name, m in results.items():
        cells = [m["routing_accuracy"], m["hit@1"], *(m.get(f"top1_table[{k}]") for k in ANSWER_SOURCES)]
        lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)

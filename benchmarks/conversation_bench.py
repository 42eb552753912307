"""Conversational follow-ups: bare follow-up vs concatenated history vs the engine's resolution.

    python benchmarks/make_conversations.py            # the set and its ids (index_builds/conversations/)
    retriever build-index ../shared/data/heteromix/corpus.jsonl.gz --ids index_builds/conversations/ids.txt \\
        --out index_builds/conversations/index --factory Flat
    python benchmarks/conversation_bench.py --name dev  # writes benchmarks/results/conversation_dev.json

Every variant goes through the benchmark harness and the engine the server uses
(``run_heteromix`` → ``Searcher.plan`` → encode → rank), scenario ``all-plain`` (the question
alone, no instruction, no filter; the bundled model ranks best that way):

* ``original``: the full dev question (the upper bound);
* ``bare``: the follow-up alone, no history;
* ``concat``: every history turn (question and answer) and the follow-up joined into one text;
* ``resolved``: the follow-up with its history, resolved in ``Searcher.plan`` by
  ``retriever.conversation`` (the method the server applies);
* ``--variants`` adds rule variants that were measured to choose the method (see ``VARIANTS``):
  they rewrite the text here and search it without history.

Metrics are record level over the top-100 units: MRR@100, Hit@10 (a gold record among the first
10 records) and recall@10 (the share of a question's gold records among the first 10 records),
per kind of second turn (``follow-up``, ``fresh``) and over all conversations.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from retriever.conversation import concatenate, content_words, is_follow_up, resolve, salient_spans
from retriever.encoder import Encoder, EncoderConfig
from retriever.evaluation.heteromix import HeteroConfig, Scenario, run_heteromix
from retriever.evaluation.metrics import collapse_records
from retriever.evaluation.report import replace_section
from retriever.evaluation.retrievers import engine_retrievers
from retriever.index import Index
from retriever.index.lexical import LexicalIndex
from retriever.query import Mode, Turn
from retriever.questions import Question, read_questions

logger = logging.getLogger("conversation_bench")
Rewrite = Callable[[str, Sequence[Turn]], str]


def _spans(history: Sequence[Turn], answers: bool) -> list[str]:
    for turn in reversed(history):
        spans = salient_spans(turn.question) + (salient_spans(turn.answer) if answers and turn.answer else [])
        if spans:
            return spans
    return content_words(history[-1].question) if history else []


def _carry(text: str, history: Sequence[Turn], *, detect: bool = True, answers: bool = False,
           substitute: bool = False, longest_only: bool = False) -> str:
    if not history or (detect and not is_follow_up(text)):
        return text
    spans = [s for s in _spans(history, answers) if s.lower() not in text.lower()]
    if longest_only and spans:
        spans = [max(spans, key=len)]
    if not spans:
        return text
    if substitute:
        pronoun = re.compile(r"(?<![\w'])(its|their|his|her|it|they|them|him|he|she|that one|this one)(?![\w'])",
                             re.IGNORECASE)
        found = pronoun.search(text)
        if found:
            word = found.group(1).lower()
            entity = spans[0] + ("'s" if word in ("its", "their", "his") else "")
            return text[:found.start()] + entity + text[found.end():] + "".join(f" {s}" for s in spans[1:])
    return f"{text.rstrip()} {' '.join(spans)}"


#: Rule variants, each one change from the engine's method (``resolved``).
VARIANTS: dict[str, Rewrite] = {
    "carry-always": lambda t, h: _carry(t, h, detect=False),
    "carry-answers-too": lambda t, h: _carry(t, h, answers=True),
    "carry-longest": lambda t, h: _carry(t, h, longest_only=True),
    "substitute": lambda t, h: _carry(t, h, substitute=True),
    "concat-questions": lambda t, h: " ".join([*(turn.question for turn in h), t]),
}


def variant_questions(questions: Sequence[Question], name: str, original: dict[str, str]) -> list[Question]:
    if name == "original":
        return [replace(q, text=original[q.id], history=()) for q in questions]
    if name == "bare":
        return [replace(q, history=()) for q in questions]
    if name == "concat":
        return [replace(q, text=concatenate(q.text, q.history), history=()) for q in questions]
    if name == "resolved":
        return list(questions)  # the engine resolves the history in Searcher.plan
    rewrite = VARIANTS[name]
    return [replace(q, text=rewrite(q.text, q.history), history=()) for q in questions]


def recall_at(ranking_records: list[str], gold: Sequence[str], k: int) -> float:
    top = set(collapse_records(ranking_records)[:k])
    return sum(g in top for g in gold) / len(gold)


def results_markdown(payload: dict) -> str:
    """The RESULTS.md section: every method and variant, pooled and per kind of second turn."""
    lines = [f"### Conversational follow-ups / {payload['conversations']} ({payload['n']} conversations: "
             f"{payload['follow_ups']} follow-ups, {payload['fresh']} fresh)", "",
             f"Command: `{payload['command']}`. Index `{payload['index']}`: {payload['records']:,} records, "
             f"{payload['units']:,} units, model {payload['model']}; scenario all-plain, record level over the "
             "top-100 units. Cells: MRR@100 / Hit@10 / recall@10. Protocol: docs/BENCHMARKS.md, "
             "\"Conversational follow-ups\".", "",
             "| method | variant | all | follow-up | fresh |", "|---|---|---|---|---|"]
    for method, variants in payload["results"].items():
        for name, groups in variants.items():
            cells = [f"{groups[g]['mrr@100']:.3f} / {groups[g]['hit@10']:.3f} / {groups[g]['recall@10']:.3f}"
                     for g in ("all", "follow-up", "fresh")]
            lines.append(f"| {method} | {name} | " + " | ".join(cells) + " |")
    lines += ["", f"The resolver changed {payload['fresh_changed_by_resolver']} of the {payload['fresh']} fresh "
              "second turns (each has a pronoun of its own)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=Path,
                        default=Path("index_builds/conversations/conversations.dev.jsonl"))
    parser.add_argument("--index", type=Path, default=Path("index_builds/conversations/index"))
    parser.add_argument("--methods", default="dense,bm25,hybrid")
    parser.add_argument("--variants", action="store_true", help="also measure the rule variants in VARIANTS")
    parser.add_argument("--name", default="dev")
    parser.add_argument("--results-md", type=Path, default=Path("benchmarks/RESULTS.md"),
                        help="regenerate this file's conversation section")
    parser.add_argument("--render-only", action="store_true",
                        help="only regenerate the RESULTS.md section from benchmarks/results/conversation_NAME.json")
    args = parser.parse_args()
    out = Path("benchmarks/results") / f"conversation_{args.name}.json"
    if args.render_only:
        replace_section(args.results_md, f"conversation {args.name}", results_markdown(json.loads(out.read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    questions = read_questions(args.conversations)
    raw = {o["id"]: o for o in map(json.loads, args.conversations.read_text().splitlines())}
    original = {i: o["original"] for i, o in raw.items()}
    kinds = {i: o["kind"] for i, o in raw.items()}
    index = Index.load(args.index)
    modes = [Mode(m) for m in args.methods.split(",")]
    encoder = Encoder(EncoderConfig(show_progress=False)) if any(m.uses_vectors for m in modes) else None
    lexical = LexicalIndex.build(index.store.texts) if any(m.uses_lexical for m in modes) else None
    retrievers = engine_retrievers(modes, index.store, index, encoder, lexical)
    store = index.store
    names = ["original", "bare", "concat", "resolved", *(VARIANTS if args.variants else ())]
    resolved_changed = sum(resolve(q.text, q.history).text != q.text for q in questions if kinds[q.id] == "fresh")
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    started = time.perf_counter()
    config = HeteroConfig(scenarios=(Scenario.ALL_PLAIN,), show_progress=False)
    for name in names:
        runs = run_heteromix(variant_questions(questions, name, original), store, retrievers, {}, config)
        for run in runs:
            gold = {q.id: q.gold for q in questions}
            rows: dict[str, list[dict[str, float]]] = {"all": [], "follow-up": [], "fresh": []}
            for qid, metrics, ranking in zip(run.question_ids, run.per_question, run.rankings, strict=True):
                records = [store.record_id(i) for i in ranking[0].tolist()]
                row = {"mrr@100": metrics["mrr@100"], "hit@10": metrics["hit@10"],
                       "recall@10": recall_at(records, gold[qid], 10)}
                rows["all"].append(row)
                rows[kinds[qid]].append(row)
            results.setdefault(run.method, {})[name] = {
                group: {**{m: round(sum(r[m] for r in rs) / len(rs), 4) for m in rs[0]}, "n": len(rs)}
                for group, rs in rows.items() if rs}
            logger.info("%s / %s: %s", run.method, name, results[run.method][name])
    payload = {
        "command": "python benchmarks/conversation_bench.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if not isinstance(v, bool) and k != "results_md") + (" --variants" if args.variants else ""),
        "conversations": str(args.conversations), "n": len(questions),
        "follow_ups": sum(k == "follow-up" for k in kinds.values()),
        "fresh": sum(k == "fresh" for k in kinds.values()),
        "fresh_changed_by_resolver": resolved_changed,
        "index": str(args.index), "units": len(store), "records": len(set(store.record_ids)),
        "model": index.manifest.model_name, "seconds": round(time.perf_counter() - started, 1),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    replace_section(args.results_md, f"conversation {args.name}", results_markdown(payload))
    print(f"wrote {out} and the conversation section of {args.results_md}")
    for method, by_variant in results.items():
        print(f"\n{method}: variant | all MRR@100 / hit@10 / recall@10 | follow-up | fresh")
        for name, groups in by_variant.items():
            cells = [f"{groups[g]['mrr@100']:.3f} / {groups[g]['hit@10']:.3f} / {groups[g]['recall@10']:.3f}"
                     for g in ("all", "follow-up", "fresh") if g in groups]
            print(f"  {name:<18} " + " | ".join(cells))


if __name__ == "__main__":
    main()

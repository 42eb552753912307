"""Derive a two-turn conversational question set from HeteroMix dev (seeded, deterministic).

    python benchmarks/make_conversations.py                       # writes index_builds/conversations/
    python benchmarks/make_conversations.py --follow-ups 400 --fresh 200 --seed 14

Construction (docs/BENCHMARKS.md, "Conversational follow-ups"):

* Candidates are dev questions that mention one of their gold records' entities verbatim
  (case-insensitive, on word boundaries): a KB triple's subject or object, an infobox's,
  table's or passage's title. The longest such mention is the question's entity ``E``.
* **follow-up** (gold = the dev question's gold): turn 1 is about ``E`` (with probability 0.7,
  when one exists, a train question that mentions ``E``, carrying its first answer half of the
  time; otherwise a template such as "Tell me about E." with the record's spelling); turn 2 is
  the dev question with its mention of ``E`` replaced by a pronoun ("E's" becomes
  "its"/"their"/"that one's", "E" becomes "it"/"they"/"that one").
* **fresh** (gold = the dev question's gold): turn 1 is about another candidate's entity; turn 2
  is a dev question unchanged, with its own entity, so a resolver that always drags the history
  in is penalized.

Each line is a HeteroMix question (``queries.*.jsonl`` fields) plus ``kind``, ``history``
([{question, answer}]), ``original`` (the full dev question) and ``entity``. The script also
writes ``ids.txt``: the gold records of every conversation plus ``--distractors`` records drawn
from mini.ids.txt, the corpus a benchmark indexes (``retriever build-index --ids``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "heteromix"
TEMPLATES = ("Tell me about {e}.", "What do you know about {e}?", "I have a question about {e}.",
             "Who or what is {e}?")
PRONOUNS = (("it", "its"), ("it", "its"), ("they", "their"), ("that one", "that one's"))
PER_DATASET_SHARE = {"sq_wikidata": 0.3, "temptabqa": 0.15, "infotabs": 0.15, "fetaqa": 0.15,
                     "hybridqa": 0.125, "ottqa": 0.125}


def entity_names(record: dict) -> list[str]:
    if record["source"] == "kb":
        return [record.get("subject") or "", record.get("object") or ""]
    return [record.get("title") or ""]


def find_mention(question: str, names: list[str]) -> tuple[re.Match[str], str] | None:
    """The longest verbatim mention of one of ``names`` (at least 3 characters, not the whole question),
    with the name as the record spells it."""
    best: tuple[re.Match[str], str] | None = None
    for name in names:
        name = name.strip()
        if len(name) < 3 or name.isdigit():
            continue
        found = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", question, flags=re.IGNORECASE)
        if found and len(found.group(0)) < len(question) * 0.8 and (best is None or len(name) > len(best[1])):
            best = found, name
    return best


def pronominalize(question: str, mention: re.Match[str], rng: random.Random) -> str:
    subject, possessive = rng.choice(PRONOUNS)
    end = mention.end()
    tail = question[end:]
    pronoun = subject
    if tail.startswith("'s") or tail.startswith(" 's"):
        pronoun, tail = possessive, tail[2 if tail.startswith("'s") else 3:]
    if mention.start() == 0:
        pronoun = pronoun[0].upper() + pronoun[1:]
    return question[:mention.start()] + pronoun + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("index_builds/conversations"))
    parser.add_argument("--follow-ups", type=int, default=400)
    parser.add_argument("--fresh", type=int, default=200)
    parser.add_argument("--distractors", type=int, default=2500, help="records drawn from mini.ids.txt")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    dev = [json.loads(line) for line in (args.data / "queries.dev.jsonl").open()]
    train = [json.loads(line) for line in (args.data / "queries.train.jsonl").open()]
    wanted = {g for q in dev for g in q["gold"]}
    records: dict[str, dict] = {}
    with gzip.open(args.data / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            record = json.loads(line)
            if record["id"] in wanted:
                records[record["id"]] = record

    candidates: dict[str, list[tuple[dict, re.Match[str], str]]] = defaultdict(list)
    for q in dev:
        names = [n for g in q["gold"] if g in records for n in entity_names(records[g])]
        found = find_mention(q["text"], names)
        if found is not None:
            candidates[q["dataset"]].append((q, *found))
    total = args.follow_ups + args.fresh
    chosen: list[tuple[dict, re.Match[str], str]] = []
    for dataset in sorted(candidates):
        pool = candidates[dataset]
        rng.shuffle(pool)
        chosen.extend(pool[:round(total * PER_DATASET_SHARE.get(dataset, 0.1))])
    rng.shuffle(chosen)
    chosen = chosen[:total]
    print(f"candidates per dataset: { {d: len(p) for d, p in sorted(candidates.items())} }; chosen {len(chosen)}")

    train_lower = [(t, t["text"].lower()) for t in train]

    def first_turn(entity: str) -> dict:
        key = entity.lower()
        hits = [t for t, low in train_lower if key in low and re.search(rf"(?<!\w){re.escape(key)}(?!\w)", low)]
        if hits and rng.random() < 0.7:
            t = rng.choice(hits)
            answer = str(t["answers"][0]) if t.get("answers") and rng.random() < 0.5 else ""
            return {"question": t["text"], "answer": answer}
        return {"question": rng.choice(TEMPLATES).format(e=entity), "answer": ""}

    out_lines = []
    entities = [name for _, _, name in chosen]
    for i, (q, mention, entity) in enumerate(chosen):
        follow_up = i < args.follow_ups
        if follow_up:
            text = pronominalize(q["text"], mention, rng)
            history = [first_turn(entity)]
        else:
            other = rng.choice([e for e in entities if e.lower() != entity.lower()])
            text = q["text"]
            history = [first_turn(other)]
        item = {k: q[k] for k in ("dataset", "gold", "gold_source", "answers") if k in q}
        if "gold_rows" in q:
            item["gold_rows"] = q["gold_rows"]
        out_lines.append({"id": f"conv::{'follow' if follow_up else 'fresh'}::{q['id']}", "text": text,
                          "kind": "follow-up" if follow_up else "fresh", "history": history,
                          "original": q["text"], "entity": entity, **item})

    mini = [line.strip() for line in (args.data / "mini.ids.txt").open() if line.strip()]
    gold = sorted({g for line in out_lines for g in line["gold"]})
    gold_set = set(gold)
    distractors = rng.sample([r for r in mini if r not in gold_set], args.distractors)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "conversations.dev.jsonl").open("w") as f:
        for line in out_lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    (args.out / "ids.txt").write_text("\n".join(gold + sorted(distractors)) + "\n")
    print(f"wrote {len(out_lines)} conversations ({args.follow_ups} follow-ups) and "
          f"{len(gold)} gold + {len(distractors)} distractor ids to {args.out}")


if __name__ == "__main__":
    main()

"""Planning speed: records linearized per second with the model's tokenizer counting window budgets.

    python benchmarks/planning_speed.py --records 50000                   # HeteroMix corpus
    python benchmarks/planning_speed.py --corpus index_builds/scale-10m/synthetic.jsonl.gz --name synthetic

Planning (the first phase of every build) reads each record and checks, with the model's tokenizer,
whether it fits one window; at 10M records that check is most of an hour on 2 cores. Side by side
in one run, on the same first ``--records`` records of the corpus (read and parsed before timing):

* ``one_call_per_record``: the tokenizer called through transformers once per record (how
  planning counted before batching);
* ``batched``: :func:`retriever.linearize.linearize_batch` in batches of ``BATCH_RECORDS`` with the
  build's own counter (``ModelInfo.token_counter``: the Rust tokenizer called directly).

Both must give the same units (checked). Each is timed ``--rounds`` times, alternating; the best
round counts. Writes ``benchmarks/results/planning_<name>.json`` with the machine's CPU flags.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retriever.encoder import EncoderConfig, ModelInfo  # noqa: E402
from retriever.linearize import BATCH_RECORDS, LINEARIZERS, WindowBudget, linearize_batch  # noqa: E402
from retriever.machine import cpu_flags  # noqa: E402
from retriever.records import read_records  # noqa: E402
from retriever.tokens import count_with  # noqa: E402

CORPUS = ROOT.parent / "shared" / "data" / "heteromix" / "corpus.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--records", type=int, default=50_000, help="first records of the corpus to plan")
    parser.add_argument("--model", default=None, help="model whose tokenizer counts (default: the bundled default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="heteromix")
    args = parser.parse_args()

    info = ModelInfo.describe(EncoderConfig(model=args.model) if args.model else EncoderConfig())
    max_tokens = max(16, info.max_seq_length - 2)  # as build_index sizes windows
    records = list(itertools.islice(read_records(args.corpus), args.records))
    sources: dict[str, int] = {}
    for record in records:
        sources[record.source.value] = sources.get(record.source.value, 0) + 1

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(info.model_dir), local_files_only=True)
    per_record = WindowBudget(max_tokens=max_tokens, count=lambda texts: count_with(tokenizer, texts))
    batched_budget = WindowBudget(max_tokens=max_tokens, count=info.token_counter())

    def one_call_per_record() -> list:
        return [LINEARIZERS[r.source].linearize(r, per_record) for r in records]

    def batched() -> list:
        return [units for start in range(0, len(records), BATCH_RECORDS)
                for units in linearize_batch(records[start:start + BATCH_RECORDS], batched_budget)]

    timings: dict[str, list[float]] = {"one_call_per_record": [], "batched": []}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in (("one_call_per_record", one_call_per_record), ("batched", batched)):
            started = time.perf_counter()
            outputs[name] = run()
            timings[name].append(time.perf_counter() - started)
    if outputs["one_call_per_record"] != outputs["batched"]:
        raise SystemExit("the two ways gave different units")
    units = sum(len(u) for u in outputs["batched"])
    best = {name: min(values) for name, values in timings.items()}
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "corpus": str(args.corpus), "records": len(records), "units": units, "sources": sources,
        "model": info.name, "max_tokens": max_tokens, "batch_records": BATCH_RECORDS,
        "machine": cpu_flags(), "load_average_before": os.getloadavg(),
        "seconds": timings,
        "records_per_second": {name: round(len(records) / s, 1) for name, s in best.items()},
        "speedup": round(best["one_call_per_record"] / best["batched"], 2),
        "same_units": True,
    }
    out = ROOT / "benchmarks" / "results" / f"planning_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

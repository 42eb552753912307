"""How far do source instructions move a model's query embeddings?

    python benchmarks/instruction_sensitivity.py bundled runs/train_cpu/model runs/probe_source_loss/model

For ``--per-dataset`` questions of each dataset in ``--questions``, encodes the question behind
each of the four source instructions and behind the general one, and reports the mean cosine
between the source-instruction embeddings of the same question (1.0: the instruction changes
nothing, so the model cannot follow it) and between each of them and the general one. A cheap
diagnostic before an expensive index build; the instruction-following figure itself comes from
``retriever bench heteromix`` (``source-soft``). Writes ``benchmarks/results/instruction_sensitivity.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from retriever.encoder import Encoder, EncoderConfig
from retriever.instructions import general_instruction, source_instruction
from retriever.records import Source

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "heteromix"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model directories; \"bundled\" is the bundled model (default)")
    parser.add_argument("--questions", type=Path, default=DATA / "queries.dev.mini.jsonl")
    parser.add_argument("--per-dataset", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "instruction_sensitivity.json")
    args = parser.parse_args()

    by_dataset: dict[str, list[str]] = {}
    for line in args.questions.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            by_dataset.setdefault(q.get("dataset", ""), []).append(q["text"])
    result: dict[str, dict[str, dict[str, float]]] = {}
    for model in [None if m == "bundled" else m for m in args.models or ["bundled"]]:
        encoder = Encoder(EncoderConfig(model=model, show_progress=False))
        rows: dict[str, dict[str, float]] = {}
        for dataset in sorted(by_dataset):
            texts = by_dataset[dataset][: args.per_dataset]
            per_source = {s: encoder.encode_queries(texts, [source_instruction(s)] * len(texts)) for s in Source}
            general = encoder.encode_queries(texts, [general_instruction()] * len(texts))
            between = [float(np.mean(np.sum(per_source[a] * per_source[b], axis=1)))
                       for a, b in itertools.combinations(list(Source), 2)]
            to_general = [float(np.mean(np.sum(per_source[s] * general, axis=1))) for s in Source]
            rows[dataset] = {"between_source_instructions": round(float(np.mean(between)), 4),
                             "source_vs_general": round(float(np.mean(to_general)), 4), "questions": len(texts)}
        result[encoder.name] = rows
        print(encoder.name)
        for dataset, row in rows.items():
            print(f"  {dataset:<12} cos between source instructions {row['between_source_instructions']:.3f}, "
                  f"source vs general {row['source_vs_general']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

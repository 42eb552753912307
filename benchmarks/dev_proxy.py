"""Score saved models on the trainer's dev-sample proxy, sharing one data load.

    python benchmarks/dev_proxy.py runs/s3_w1/model runs/s3_plain/model runs/soup_0.5

The same check ``retriever train`` runs at the end of a run (``[evaluation]`` of ``--config``;
see :mod:`retriever.training.devcheck`): sampled dev.mini questions against their gold units plus
distractor units, scenario 1 (general instruction) MRR@100, scenario 2 MRR@100 and the
instruction-following rate. It costs about a minute to read the corpus and two per model, against
about twelve for a mini index build, so it is for choosing among candidates (e.g. merge weights,
``retriever merge-models``); the figures to report come from ``retriever bench heteromix``.
Writes ``benchmarks/results/dev_proxy.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from retriever.model_dir import resolve_model_dir
from retriever.training.config import load_config
from retriever.training.devcheck import evaluate_sample, sample_dev
from retriever.training.model import EmbeddingModel
from retriever.training.pipeline import read_run_data

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories (\"bundled:all-MiniLM-L6-v2\" works too)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "train_cpu.toml",
                        help="training config whose [data] and [evaluation] define the sample")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dev_proxy.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = load_config(args.config, {"run": {"show_progress": False}})
    ev = config.evaluation
    if not (ev.dev_queries and ev.dev_ids):
        parser.error(f"{args.config}: [evaluation] needs dev_queries and dev_ids")
    sample = sample_dev(ev.dev_queries, ev.dev_ids, ev.questions, ev.distractor_units, config.run.seed)
    first = EmbeddingModel(resolve_model_dir(args.models[0]), config.model, "cpu")
    # Read exactly as the trainer does (training questions included), so the sample's units match.
    data, _ = read_run_data(config, first, sample)

    results: dict[str, dict[str, float]] = {}
    for i, name in enumerate(args.models):
        model = first if i == 0 else EmbeddingModel(resolve_model_dir(name), config.model, "cpu")
        metrics = evaluate_sample(model, data, sample, ev.distractor_units, config.run.seed)
        results[name] = metrics
        print(f"{name}: s1 MRR@100 {metrics['s1_mrr@100']:.3f}, s2 MRR@100 {metrics['s2_mrr@100']:.3f}, "
              f"follow@10 {metrics['s2_follow@10']:.3f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": str(args.config), "models": results}, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

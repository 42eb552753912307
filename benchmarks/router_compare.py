"""Source routers compared on the held-apart dev phrasings: learned heads vs prototypes vs rules.

    python benchmarks/router_compare.py --name bundled
    python benchmarks/router_compare.py --model runs/train_cpu/model --name train_cpu

Embeds the ``train`` and ``dev`` splits of the router grammar
(``retriever/training/instruction_pool.py``) with the model, fits each reader on ``train`` and
scores it on ``dev`` (frames, source names and connectives never seen in training):

* ``head-h<N>``: the router head with ``N`` hidden units (``h0``: one logistic per output);
* ``prototypes``: nearest mean embedding of each labelled set;
* ``rules``: the keyword regexes (``--resolve rules``);
* ``tuned-l<L>-r<R>-e<E>`` (``--tuned L:R:E``): the router ``[router] kind = "tuned"`` trains, LoRA
  adapters of rank ``R`` on the model's first ``L`` transformer layers (0: all) with a linear head
  tagging each token (a source name asked for or excluded, or neither), ``E`` epochs on the same
  training instructions (the network reads the instruction's words, not a frozen pooled
  embedding; :func:`retriever.training.router.fit_tuned`), each name's source read by its nearest
  training name in the model's embedding (``NamePrototypes``, as shipped); ``...-tags-only``: the
  same network reading each name's source from its tags.

Figures: exact-set accuracy (all, single, multi-source, negation, unnamed), per-source precision
and recall, and a threshold sweep of what the server would do (filter right / wrong / none).
Writes ``benchmarks/results/router_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from retriever.encoder import Encoder, EncoderConfig
from retriever.router import SourceRouter, TunedSpec
from retriever.training.config import RouterConfig
from retriever.training.instruction_pool import router_examples
from retriever.training.router import Prototypes, fit_head, fit_tuned, read_rules, score_readings, sweep

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/router_<name>.json")
    parser.add_argument("--hidden", type=int, nargs="+", default=[0, 16, 64, 256], help="head sizes to compare")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tuned", nargs="*", default=[], metavar="LAYERS:RANK:EPOCHS",
                        help="tuned routers to add, e.g. 0:8:2 3:16:2 (minutes each on a CPU)")
    parser.add_argument("--tuned-lr", type=float, default=None, help="adapters' lr (default: [router] tuned_lr)")
    parser.add_argument("--head-lr", type=float, default=None, help="head's lr (default: [router] head_lr)")
    parser.add_argument("--train-examples", type=int, default=None,
                        help="training instructions drawn from the grammar (default: [router] train_examples)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="an .npz of embedded instructions to reuse across runs (written if missing texts)")
    args = parser.parse_args()

    defaults = RouterConfig()
    encoder = Encoder(EncoderConfig(model=args.model, show_progress=False, threads=args.threads))
    train = router_examples("train", args.train_examples or defaults.train_examples, args.seed)
    dev = router_examples("dev", defaults.dev_examples, args.seed)
    started = time.perf_counter()
    vectors = embed_all(encoder, [e.text for e in [*train, *dev]], args.cache)
    x_train = np.stack([vectors[e.text] for e in train])
    x_dev = np.stack([vectors[e.text] for e in dev])
    embed_seconds = time.perf_counter() - started

    def embed(texts):
        return encoder.encode_documents(texts, show_progress=False)

    readers = {}
    for hidden in args.hidden:
        started = time.perf_counter()
        layers = fit_head(x_train, train, hidden, defaults.steps, defaults.lr, defaults.weight_decay, args.seed)
        readers[f"head-h{hidden}"] = (SourceRouter(layers, defaults.threshold, encoder.checksum).read(x_dev),
                                      time.perf_counter() - started)
    started = time.perf_counter()
    readers["prototypes"] = (Prototypes.fit(x_train, train).read(x_dev), time.perf_counter() - started)
    readers["rules"] = (read_rules(dev), 0.0)
    for spec in args.tuned:
        layers, rank, epochs = (int(v) for v in spec.split(":"))
        started = time.perf_counter()
        tuned = fit_tuned(encoder.model_dir, train, TunedSpec(layers, rank, 2 * rank), epochs,
                          args.tuned_lr or defaults.tuned_lr, args.head_lr or defaults.head_lr, args.seed,
                          encoder.checksum, defaults.threshold, embed=embed)
        name = f"tuned-l{layers}-r{rank}-e{epochs}"
        readers[name] = (tuned.read_texts([e.text for e in dev], embed), time.perf_counter() - started)
        tuned.prototypes = None  # the same network, each name's source read by the tags alone
        readers[f"{name}-tags-only"] = (tuned.read_texts([e.text for e in dev]), 0.0)

    results = {}
    for name, (readings, seconds) in readers.items():
        results[name] = {"fit_seconds": round(seconds, 2), **score_readings(dev, readings, defaults.threshold),
                         "sweep": sweep(dev, readings)}
        r = results[name]
        print(f"{name:<16} exact {r['exact_set_accuracy']:.3f}  single {r['accuracy[single]']:.3f}  "
              f"multi {r['accuracy[multi]']:.3f}  negation {r['accuracy[negation]']:.3f}  "
              f"unnamed {r['accuracy[unnamed]']:.3f}  @{defaults.threshold}: right {r['filtered_right']:.3f} "
              f"wrong {r['filtered_wrong']:.3f} none {r['unfiltered']:.3f}")
    out = RESULTS / f"router_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": "python " + shlex.join(sys.argv), "model": encoder.name, "checksum": encoder.checksum,
               "seed": args.seed, "train_examples": len(train), "dev_examples": len(dev),
               "embed_seconds": round(embed_seconds, 1), "threshold": defaults.threshold, "results": results}
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def embed_all(encoder: Encoder, texts: list[str], cache: Path | None) -> dict[str, np.ndarray]:
    """Each distinct text's embedding, reusing and extending ``cache`` (keyed by the model checksum)."""
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["checksum"]) == encoder.checksum:
                known = dict(zip(saved["texts"].tolist(), saved["vectors"], strict=True))
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        known.update(zip(missing, encoder.encode_documents(missing), strict=True))
        if cache is not None:
            names = list(known)
            np.savez(cache, checksum=encoder.checksum, texts=np.array(names),
                     vectors=np.stack([known[t] for t in names]))
    return known


if __name__ == "__main__":
    main()

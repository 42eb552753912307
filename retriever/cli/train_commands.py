"""``train``: run the three-stage training recipe from a TOML config."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from types import FrameType
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an instruction-aware retriever (pretrain → align → finetune)",
        description="Run the stages listed in a TOML config (configs/train_cpu.toml, configs/train_gpu.toml, "
        "configs/train_llm_gpu.toml) and write a sentence-transformers model directory with its prompts and "
        "training_manifest.json. Ctrl-C or SIGTERM writes a checkpoint; continue with --resume. "
        "See docs/TRAINING.md.")
    parser.add_argument("--config", type=Path, required=True, help="TOML training configuration")
    parser.add_argument("--output-dir", type=Path, default=None, help="override [run] output_dir")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from its completed stages and latest checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete output_dir first")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--lenient", action="store_true",
                        help="skip corpus fields a record's source type does not have, with a warning per field name "
                        "(default: such a field stops the run before training, naming file, line and field); "
                        "the same as --set data.lenient=true")
    parser.add_argument("--stages", default=None, metavar="LIST",
                        help="override [run] stages, comma-separated (e.g. 'finetune' or 'align,finetune' for the "
                        "ablation); every listed stage still needs its section in the file")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value of the file, VALUE in TOML syntax (e.g. finetune.tokens=600000, "
                        "finetune.temperature=0.02, 'run.device=\"cpu\"'); repeatable. Bare words are read as "
                        "strings")
    parser.set_defaults(func=run_train)

    router = subparsers.add_parser(
        "train-router", help="train a model's source router (which sources an instruction asks for)",
        description="Fit the source router on the router grammar's training instructions, report it on the "
        "held-apart dev phrasings and save it where the model's loader finds it: "
        "<model>/router.safetensors, or for the bundled model retriever/data/router-<checksum>.safetensors. "
        "`retriever train` does this itself after the last stage ([router] in the TOML). See docs/TRAINING.md.")
    router.add_argument("--model", default=None,
                        help="model directory or bundled name (default: the bundled default model)")
    router.add_argument("--out", type=Path, default=None, help="where to write the router (default: see above)")
    router.add_argument("--threshold", type=float, default=None,
                        help="filter at router confidence >= this (default: [router] threshold's default)")
    router.add_argument("--kind", choices=("tuned", "head"), default=None,
                        help="tuned (default): LoRA adapters on the model's transformer and a linear head tagging "
                        "each word as a source name asked for or excluded, minutes on a CPU, reads negations and "
                        "multi-source requests better; head: a small head on the "
                        "model's frozen embedding, seconds (docs/TRAINING.md, 'The source router')")
    router.add_argument("--seed", type=int, default=42, help="grammar and head seed (default 42)")
    router.add_argument("--device", default=None, help="cpu, cuda... (default: CUDA when present)")
    router.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    router.add_argument("--misses", type=Path, default=None, metavar="FILE",
                        help="also write the held-apart dev instructions it reads wrong to FILE, one JSON object "
                        "a line (text, kind, allowed, read, confidence): what to look at before changing the "
                        "grammar, without copying the dev half into training")
    router.set_defaults(func=run_train_router)

    merge = subparsers.add_parser(
        "merge-models", help="average the weights of two models of one architecture (a two-model soup)",
        description="Write (1 - WEIGHT) * FIRST + WEIGHT * SECOND, tensor by tensor, as a new model directory; "
        "prompts, pooling, tokenizer and manifest come from FIRST. Meant for two fine-tunes of one starting "
        "model, e.g. a stage-3 run with the source-preference term (FIRST) and one without it (SECOND): the "
        "weight trades instruction following (low) against general ranking (high). Check the result with "
        "`retriever bench heteromix`.")
    merge.add_argument("first", type=Path, help="model directory (weight 1 - WEIGHT)")
    merge.add_argument("second", type=Path, help="model directory (weight WEIGHT)")
    merge.add_argument("--weight", type=float, required=True, help="share of SECOND, in [0, 1]")
    merge.add_argument("--out", type=Path, required=True, help="output model directory")
    merge.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    merge.set_defaults(func=run_merge)

    from retriever.bundled import QUANTIZATIONS

    pack = subparsers.add_parser(
        "pack-model", help="pack a trained model into the package as a bundled model (how a new default ships)",
        description="Write MODEL (a float32 sentence-transformers directory, e.g. runs/train_cpu/model) to "
        "retriever/data/models/NAME/: its small files as saved and its weights with every matrix as int8 plus "
        "one float32 scale per row (a quarter of the size; --quantization float16: half). It is then served as "
        "bundled:NAME, unpacked to float32 in $RETRIEVER_CACHE_DIR/models on first use and checked against the "
        "SHA-256 recorded here. Check the packed model's quality before shipping it (docs/TRAINING.md, "
        "\"Shipping a model\").")
    pack.add_argument("model", type=Path, help="the trained model directory")
    pack.add_argument("--name", required=True, help="bundled name, e.g. heteromix-minilm-l6")
    pack.add_argument("--quantization", choices=list(QUANTIZATIONS), default="int8",
                      help="how matrices are stored (default int8)")
    pack.add_argument("--out", type=Path, default=None, help="pack directory (default retriever/data/models/NAME)")
    pack.add_argument("--overwrite", action="store_true", help="replace an existing pack")
    pack.set_defaults(func=run_pack)


def run_train(args: argparse.Namespace) -> int:
    from retriever.training import StopRequested, load_config, train

    overrides: dict[str, Any] = {"run": {}}
    for setting in args.settings:
        _apply_setting(overrides, setting)
    if args.stages is not None:
        overrides["run"]["stages"] = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.output_dir is not None:
        overrides["run"]["output_dir"] = str(args.output_dir)
    if args.no_progress:
        overrides["run"]["show_progress"] = False
    if args.lenient:
        overrides.setdefault("data", {})["lenient"] = True
    config = load_config(args.config, overrides)

    requested = {"stop": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        requested["stop"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = train(config, resume=args.resume, overwrite=args.overwrite,
                       should_stop=lambda step: requested["stop"])
    except StopRequested as exc:
        print(f"{exc}; continue with: retriever train --config {args.config} --resume")
        return 3
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"model: {report.model_dir} ({report.seconds:.0f}s)")
    width = max((len(stage["stage"]) for stage in report.stages), default=0)
    for stage in report.stages:
        merged = stage.get("merged")
        note = (f" (instructed run; saved merged with {merged['from'][1]}, "
                f"{merged['plain_merge_weight']:g} on it)" if merged else "")
        print(f"  {stage['stage']:<{width}}  {stage['steps']} steps, {stage['tokens']} tokens, "
              f"{stage['seconds']:.0f}s, {stage['tokens_per_second']:.0f} tokens/s, "
              f"loss {stage['first_loss']:.4f} → {stage['last_loss']:.4f}{note}")
    if report.dev_metrics:
        print("dev sample (proxy):", json.dumps(report.dev_metrics, indent=1))
    if report.router is not None:
        dev = report.router["dev"]
        print(f"source router: threshold {report.router['threshold']:.2f}; held-apart dev phrasings: exact set "
              f"{dev['exact_set_accuracy']:.3f}, negation {dev['accuracy[negation]']:.3f}, multi "
              f"{dev['accuracy[multi]']:.3f}; filters right {dev['filtered_right']:.3f}, wrong "
              f"{dev['filtered_wrong']:.3f}")
    return 0


def run_train_router(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from retriever.errors import InvalidInputError
    from retriever.training.config import RouterConfig
    from retriever.training.router import train_model_router

    config = RouterConfig()
    if args.threshold is not None:
        config = replace(config, threshold=args.threshold)
    if args.kind is not None:
        config = replace(config, kind=args.kind)
    config.validate()
    if args.misses is not None and not args.misses.parent.is_dir():
        raise InvalidInputError(f"--misses {args.misses}: no directory {args.misses.parent}")
    path, report = train_model_router(args.model, config, args.seed, args.out, args.device, args.threads)
    dev = report.dev
    print(f"router: {path} (threshold {report.router.threshold:.2f})")
    if args.misses is not None:
        args.misses.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in report.misses),
                               encoding="utf-8")
        print(f"misread dev instructions: {len(report.misses)} of {dev['n']} in {args.misses}")
    print(f"held-apart dev phrasings ({dev['n']}): exact set {dev['exact_set_accuracy']:.3f}, single "
          f"{dev['accuracy[single]']:.3f}, multi {dev['accuracy[multi]']:.3f}, negation "
          f"{dev['accuracy[negation]']:.3f}, "
          f"unnamed {dev['accuracy[unnamed]']:.3f}")
    for row in report.sweep:
        print(f"  threshold {row['threshold']:.2f}: filters right {row['filtered_right']:.3f}, wrong "
              f"{row['filtered_wrong']:.3f}, none {row['unfiltered']:.3f}; served right {row['served_right']:.3f}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from retriever.errors import InvalidInputError
    from retriever.training.merge import interpolate_models

    if args.out.exists() and not args.overwrite:
        raise InvalidInputError(f"{args.out} exists; pass --overwrite to replace it")
    out = interpolate_models(args.first, args.second, args.weight, args.out)
    print(f"model: {out} ({1 - args.weight:g} × {args.first} + {args.weight:g} × {args.second})")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from retriever.bundled import PACKS_DIR, PREFIX, pack_model
    from retriever.errors import InvalidInputError

    if not args.name or "/" in args.name or args.name.startswith((".", PREFIX)):
        raise InvalidInputError(f"--name {args.name!r}: a plain name such as heteromix-minilm-l6")
    if not args.model.is_dir():
        raise InvalidInputError(f"model directory not found: {args.model}")
    out = args.out or PACKS_DIR / args.name
    meta = pack_model(args.model, out, args.quantization, args.overwrite)
    print(f"packed {args.model} → {out} as {PREFIX}{args.name}: {meta['quantization']}, "
          f"{meta['packed_bytes'] / 1e6:.1f} MB of weights (float32 {meta['float32_bytes'] / 1e6:.1f} MB); "
          f"unpacks to SHA-256 {meta['checksum'][:16]}")
    return 0


def _apply_setting(overrides: dict[str, Any], setting: str) -> None:
    """Merge ``section.key=value`` (value in TOML syntax, else a plain string) into ``overrides``."""
    import tomllib

    from retriever.training.config import TrainConfigError

    key, sep, raw = setting.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or len(path) < 2 or not all(path):
        raise TrainConfigError(f"--set {setting!r}: expected SECTION.KEY=VALUE, e.g. finetune.tokens=600000")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    node = overrides
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"--set {setting!r}: {part} is a value, not a section")
    node[path[-1]] = value

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
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from retriever.training import StopRequested, load_config, train

    overrides: dict[str, Any] = {"run": {}}
    if args.output_dir is not None:
        overrides["run"]["output_dir"] = str(args.output_dir)
    if args.no_progress:
        overrides["run"]["show_progress"] = False
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
    for stage in report.stages:
        print(f"  {stage['stage']:<9} {stage['steps']} steps, {stage['tokens']} tokens, "
              f"{stage['tokens_per_second']:.0f} tokens/s, loss {stage['first_loss']:.4f} → {stage['last_loss']:.4f}")
    if report.dev_metrics:
        print("dev sample (proxy):", json.dumps(report.dev_metrics, indent=1))
    return 0

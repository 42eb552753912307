"""The local and the Ray Data build engines side by side on one corpus: equality, time, memory.

    python benchmarks/engine_compare.py --name sample                     # the bundled sample corpus
    python benchmarks/engine_compare.py --ids ../shared/data/heteromix/mini.ids.txt --name mini \
        --build-flags="--model /work/models/heteromix --backend openvino --precision bfloat16"

Runs ``retriever build-index`` twice as subprocesses, the local engine then ``--engine ray`` on a
local Ray instance (all the machine's CPUs), each alone on the machine. Reports, for each: wall
time, encoding units/s (from the manifest), the peak RSS of the whole process tree (the Ray
engine's actors and raylet included; sampled every 0.2 s from /proc), and then checks that the two
indexes are the same: units in the same order, the largest vector difference, and the top-10 of
``--queries`` dev questions in three filters. Writes ``benchmarks/results/engines_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "heteromix"
sys.path.insert(0, str(ROOT))

from retriever.backends import Backend, Precision  # noqa: E402
from retriever.encoder import Encoder, EncoderConfig  # noqa: E402
from retriever.index import Index, Manifest  # noqa: E402
from retriever.machine import cpu_flags  # noqa: E402
from retriever.query import Query  # noqa: E402
from retriever.records import Source  # noqa: E402
from retriever.sample import SAMPLE_CORPUS, data_file  # noqa: E402
from retriever.searcher import Searcher  # noqa: E402


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total


def run_build(args: list[str]) -> dict[str, Any]:
    """Run one build; wall seconds and the process tree's peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"build failed ({' '.join(args)}):\n{output[-4000:]}")
    return {"wall_seconds": round(time.perf_counter() - started, 1), "peak_tree_rss_mb": round(peak / 2**20, 1),
            "last_line": output.strip().splitlines()[-1]}


def compare(local: Path, ray: Path, questions: list[str], encoder_config: EncoderConfig) -> dict[str, Any]:
    a, b = Index.load(local, use_gpu=False), Index.load(ray, use_gpu=False)
    same_units = (len(a.store) == len(b.store) and list(a.store.record_ids) == list(b.store.record_ids)
                  and list(a.store.texts) == list(b.store.texts) and np.array_equal(a.store.parts, b.store.parts))
    diff = 0.0
    for source, shard in a.shards.shards.items():
        other = b.shards.shards[source]
        for start in range(0, shard.count, 50_000):
            n = min(50_000, shard.count - start)
            diff = max(diff, float(np.abs(shard.cpu_index.reconstruct_n(start, n)
                                          - other.cpu_index.reconstruct_n(start, n)).max()))
    encoder = Encoder(encoder_config)
    sa, sb = Searcher(a, encoder), Searcher(b, encoder)
    same, total = 0, 0
    for sources in [(), (Source.TABLE,), (Source.KB, Source.INFOBOX)]:
        queries = [Query(q, sources=sources) for q in questions]
        for ra, rb in zip(sa.search(queries), sb.search(queries)):
            total += 1
            same += [h.unit_id for h in ra.hits] == [h.unit_id for h in rb.hits]
    return {"units": len(a.store), "same_units_in_same_order": same_units, "max_abs_vector_difference": diff,
            "identical_top10": same, "queries_compared": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=None,
                        help="corpus (default: the HeteroMix corpus with --ids, else the bundled sample)")
    parser.add_argument("--ids", type=Path, default=None, help="record-id list (e.g. mini.ids.txt)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--queries", type=int, default=200, help="dev questions whose top-10 are compared")
    parser.add_argument("--work", type=Path, default=ROOT / "index_builds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--build-flags", default="",
                        help="extra `build-index` flags for both builds (one string), e.g. the model and backend; "
                        "the compared searches encode with the same --model/--backend/--precision")
    args = parser.parse_args()
    corpus = args.corpus or (DATA / "corpus.jsonl.gz" if args.ids else data_file(SAMPLE_CORPUS))
    extra = shlex.split(args.build_flags)
    cli = [sys.executable, "-m", "retriever", "build-index", str(corpus), "--no-progress", "--overwrite", *extra]
    if args.ids:
        cli += ["--ids", str(args.ids)]
    local, ray = args.work / f"engines-{args.name}-local", args.work / f"engines-{args.name}-ray"
    results: dict[str, Any] = {"corpus": str(corpus), "ids": str(args.ids) if args.ids else None,
                               "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg(),
                               "machine": platform.processor() or platform.machine(),
                               "cpu": cpu_flags(), "build_flags": extra}
    results["local"] = run_build([*cli, "--out", str(local)])
    results["ray"] = run_build([*cli, "--out", str(ray), "--engine", "ray"])
    for name, path in (("local", local), ("ray", ray)):
        build = Manifest.read(path).build
        results[name]["encode_units_per_second"] = build["units_per_second"]
        results[name]["parts"] = build["parts"]
    with (DATA / "queries.dev.jsonl").open() as fh:
        questions = [json.loads(line)["text"] for _, line in zip(range(args.queries), fh)]
    flags = dict(zip(extra[::2], extra[1::2], strict=False))
    encoder_config = EncoderConfig(model=flags.get("--model"), backend=Backend(flags.get("--backend", "torch")),
                                   precision=Precision(flags.get("--precision", "auto")), show_progress=False)
    results["equality"] = compare(local, ray, questions, encoder_config)
    out = args.out or ROOT / "benchmarks" / "results" / f"engines_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

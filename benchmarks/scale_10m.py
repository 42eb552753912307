"""A 10M-unit index built by the project's build pipeline and served on one 24 GiB machine.

    python benchmarks/scale_10m.py                                  # 10M units; re-run the same command to resume
    python benchmarks/scale_10m.py --units 200000 --name smoke      # a smoke run (minutes)

Cost: at 10M units on 2 CPU cores (AVX2) about 1.5 hours once a base index exists (session 16:
writing the corpus 164 s, validating 10M records ~3 min, planning ~34 min with batched token
counts (extrapolated from 1,522 s for 7.5M records), 15 GB of encoded parts ~2 min, IVF training,
adding and the recall gate 930 s, exact
search for recall 203 s, serving and latency a few minutes; building a base index here adds
35-90 min, `index_builds/lite` took 40 min) and ~30 GB of free disk
(docs/SCALING.md). Every stage is resumable: interrupt it (Ctrl-C, end of session) and run the same
command again. Planning resumes after its last checkpoint (every 250,000 records) and the index
phase restarts from its beginning; encoded parts, the corpus and the base index are kept. A shard
below ``--min-recall`` fails the build with its parts kept. ``--base-index index_builds/full`` (the
whole HeteroMix corpus, 444,417 units: about 22 synthetic units per base) gives a neighbour structure
closer to a real corpus than ``index_builds/mini-default``'s 36,301 units (about 660 copies of each
text base).

Stages, each skipped when its output is already there:

1. **Base units**: real HeteroMix units and their real embeddings (bundled all-MiniLM-L6-v2):
   ``--base-index DIR``, else ``index_builds/mini`` when built, else a small ``Flat`` index of a
   seeded sample of corpus records built here (``<work>/base``, about ``units / --copies-per-base``
   units; the real model encodes 9-25 units/s on 2 cores).
2. **Synthetic corpus** ``<work>/synthetic.jsonl.gz`` (``benchmarks/synthetic_units.py``): ``--units``
   records split over the four sources like CompMix-IR (5.9M text, 1.0M table rows, 2.2M kb, 1.1M
   infobox of 10.2M). Record ``syn-<i>`` repeats the text of a seeded base unit of its source and
   ends with the marker ``[syn <i>]``; texts that could pass the window size are trimmed so each
   record is one unit.
3. **Build** with :func:`retriever.index.build_index` (``--factory auto``, recall gate, journal,
   resume) in a child process, with :class:`SyntheticEncoder`: unit ``i`` gets
   ``normalize(base[j(i)] + sigma * g_i)`` with ``g_i`` Gaussian of expected norm 1; ``j(i)`` and
   ``g_i`` come from ``(--seed, i)`` alone, so the vectors can be regenerated for exact search.
4. **Measure**: files and the memory model per shard; recall@10 of the loaded index
   (``Index.load(...).shards.search`` in-process with the manifest's tuned parameters: the server
   takes text queries only) against exact search over all regenerated vectors, for ``--queries``
   real dev questions (encoded by the real model) and as many perturbed units; then
   ``retriever serve --canary-units 0`` in a child process (the synthetic vectors are not the model's, so the
   data canary's re-encoding would refuse them): start time to SERVING, RSS (``/proc/<pid>/status``),
   p50/p99 and QPS at ``--clients`` (benchmarks/load_test.py), and whether gRPC returns the
   in-process hits.

Writes ``benchmarks/results/scale_<name>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import math
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import load_test  # noqa: E402
from synthetic_units import (  # noqa: E402
    CORPUS,
    CORPUS_VERSION,
    SOURCES,
    Bases,
    SyntheticEncoder,
    SyntheticUnits,
    sample_records,
    source_counts,
    trim_to_window,
    write_corpus,
)

from retriever.cli.index_commands import parse_bytes  # noqa: E402
from retriever.encoder import Encoder, EncoderConfig, ModelInfo  # noqa: E402
from retriever.index import BuildConfig, Index, build_index  # noqa: E402
from retriever.index.factory import (  # noqa: E402
    EXACT_MAX_UNITS,
    bytes_per_unit,
    choose_factory,
    exact_ground_truth,
    held_aside_queries,
    index_bytes,
)
from retriever.index.recall import DEFAULT_QUERY_NOISE  # noqa: E402

logger = logging.getLogger("scale")
GiB = 1 << 30


def base_index_dir(args: argparse.Namespace, work: Path, counts: dict[str, int]) -> Path:
    """The base index: given, ``index_builds/mini``, or built here from a seeded record sample."""
    if args.base_index is not None:
        return args.base_index
    mini = ROOT / "index_builds" / "mini"
    if (mini / "manifest.json").is_file():
        return mini
    out = work / "base"
    if (out / "manifest.json").is_file():
        return out
    wanted = {s: math.ceil(c / args.copies_per_base) for s, c in counts.items() if c}
    ids_file = work / "base.ids.txt"
    if not ids_file.is_file():
        ids = sample_records(args.corpus, wanted, args.seed)
        ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
    logger.info("building the base index %s from %s (real model, Flat; resumable)", out, ids_file)
    build_index(BuildConfig(corpus=args.corpus, out=out, ids_file=ids_file, factory="Flat", resume=True),
                EncoderConfig(show_progress=args.progress))
    return out


def prepare(args: argparse.Namespace, work: Path) -> tuple[SyntheticUnits, dict[str, Any]]:
    """Stages 1 and 2: the base index and the synthetic corpus (checked against its parameters)."""
    counts = source_counts(args.units)
    started = time.perf_counter()
    base_dir = base_index_dir(args, work, counts)
    base_manifest = json.loads((base_dir / "manifest.json").read_text())
    params = {"corpus_version": CORPUS_VERSION, "units": args.units, "counts": counts, "sigma": args.sigma,
              "seed": args.seed, "base_index": str(base_dir.resolve()),
              "base_fingerprint": base_manifest["corpus_fingerprint"]}
    sidecar = work / "synthetic.json"
    if sidecar.is_file() and json.loads(sidecar.read_text()) != params:
        raise SystemExit(f"{work} holds a synthetic corpus made with other parameters ({sidecar}); pass another "
                         f"--name or --work, or delete {work} to start over")
    bases = Bases.load(base_dir)
    model = ModelInfo.describe(EncoderConfig())
    trimmed = trim_to_window(bases, model.token_counter(), model.max_seq_length - 2, args.units - 1)
    units = SyntheticUnits(bases, counts, args.sigma, args.seed)
    timings: dict[str, float] = {"base_index_build_s": base_manifest["build_seconds"],
                                 "bases_ready_s": round(time.perf_counter() - started, 1)}
    corpus = work / "synthetic.jsonl.gz"
    if not corpus.is_file() or not sidecar.is_file():
        started = time.perf_counter()
        write_corpus(corpus, units)
        sidecar.write_text(json.dumps(params, indent=2))
        timings["corpus_write_s"] = round(time.perf_counter() - started, 1)
    per_source = {s: len(p) for s, p in bases.pools.items()}
    info = {**params, "base_units": per_source, "base_texts_trimmed_to_one_window": trimmed,
            "copies_per_base": {s: round(counts[s] / max(1, per_source[s]), 1) for s in SOURCES},
            "corpus_bytes": corpus.stat().st_size, "timings": timings}
    # From here on only the base vectors are needed: drop the base texts (the corpus on disk has them).
    units.bases.texts.clear()
    units.bases.titles.clear()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give the freed strings back to the OS (glibc keeps them otherwise)
    return units, info


def spread(x: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(x.mean()), 4), "p05": round(float(np.quantile(x, .05)), 4),
            "p95": round(float(np.quantile(x, .95)), 4)}


# --- the build, in a child process -------------------------------------------------------------


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def build_child(args: argparse.Namespace, work: Path) -> None:
    """Run the build (resuming) and append this run's wall time, phases and peak RSS to runs.jsonl."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(work / "build.log")])
    logging.getLogger("faiss").setLevel(logging.WARNING)
    collected = _Messages()
    logging.getLogger("retriever").addHandler(collected)
    units, _ = prepare(args, work)
    Path("/proc/self/clear_refs").write_text("5")  # restart VmHWM: the peak below is the build's, not the set-up's
    encoder = SyntheticEncoder(units, EncoderConfig(show_progress=args.progress))
    run: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "units": units.total,
                           # what the benchmark holds before the build starts (base vectors, model info)
                           "rss_before_build_bytes": proc_status(os.getpid())["VmRSS"]}
    started = time.perf_counter()
    try:
        report = build_index(BuildConfig(corpus=work / "synthetic.jsonl.gz", out=work / "index", factory="auto",
                                         resume=True, memory_budget=args.memory_budget, min_recall=args.min_recall),
                             encoder)
        run.update(encode_s=round(report.encode_seconds, 1), parts_encoded=report.parts_encoded,
                   parts_reused=report.parts_reused)
    except BaseException as exc:
        run["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run["wall_s"] = round(time.perf_counter() - started, 1)
        run["peak_rss_bytes"] = proc_status(os.getpid())["VmHWM"]  # since the build started (clear_refs)
        run["phases"] = phases(collected.messages)
        with (work / "runs.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(run) + "\n")


def run_build(args: argparse.Namespace, work: Path) -> None:
    """The build in a child process; a child killed before it could log its run is logged from here."""
    runs = work / "runs.jsonl"
    logged = len(runs.read_text().splitlines()) if runs.is_file() else 0
    stamp, started = time.strftime("%Y-%m-%dT%H:%M:%S"), time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(target=build_child, args=(args, work))
    child.start()
    child.join()
    if child.exitcode == 0:
        return
    if (len(runs.read_text().splitlines()) if runs.is_file() else 0) == logged:
        with runs.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"started": stamp, "units": args.units,
                                 "wall_s": round(time.perf_counter() - started, 1), "error": f"exit {child.exitcode}",
                                 "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024})
                     + "\n")
    raise SystemExit(f"the build stopped (exit {child.exitcode}); run the same command again to resume")


def phases(messages: list[str]) -> dict[str, Any]:
    """Phase times from the build's log: planning, training (in shard order) and each shard's total."""
    out: dict[str, Any] = {"trained": [], "shards": {}}
    for message in messages:
        if found := re.match(r"planned .* in ([\d.]+)s", message):
            out["plan_s"] = float(found.group(1))
        elif found := re.match(r"trained (\S+) on (\d+) vectors in ([\d.]+)s", message):
            out["trained"].append({"factory": found.group(1), "sample": int(found.group(2)),
                                   "seconds": float(found.group(3))})
        elif found := re.match(r"shard (\w+): (\S+), (\d+) vectors.* in ([\d.]+)s", message):
            out["shards"][found.group(1)] = {"factory": found.group(2), "seconds": float(found.group(4))}
    out["index_s"] = round(sum(s["seconds"] for s in out["shards"].values()), 1)
    return out


# --- measurements ------------------------------------------------------------------------------


def memory_model(index_dir: Path) -> dict[str, Any]:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    d = manifest["dimension"]
    shards = {}
    for shard in manifest["shards"]:
        size = (index_dir / shard["file"]).stat().st_size
        predicted = index_bytes(shard["factory"], shard["count"], d)
        shards[shard["source"]] = {
            "units": shard["count"], "factory": shard["factory"], "reason": shard["reason"],
            "recall_at_10_gate": shard["recall_at_10"], "search": shard["search"], "file_bytes": size,
            "model_bytes_per_unit": bytes_per_unit(shard["factory"], d), "model_index_bytes": predicted,
            "file_bytes_per_unit": round(size / shard["count"], 2),
            "file_over_model": round(size / predicted, 4)}
    return {"shards": shards, "files": {f["name"]: f["bytes"] for f in manifest["files"]},
            "model_index_bytes": sum(s["model_index_bytes"] for s in shards.values()),
            "faiss_file_bytes": sum(s["file_bytes"] for s in shards.values()),
            "build_seconds_last_run": manifest["build_seconds"], "build": manifest["build"]}


def recall_vs_exact(index_dir: Path, units: SyntheticUnits, questions: list[str], seed: int,
                    congruence: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Recall@10 of the loaded index against exact search over every regenerated vector.

    The same exact pass gives the neighbour structure of the synthetic units: the cosine of 200
    sampled units to their 10th nearest other unit (and, without search, to their base vector).
    """
    from faiss.contrib.evaluation import knn_intersection_measure

    index = Index.load(index_dir, use_gpu=False)
    rng = np.random.default_rng(seed)
    check = np.unique(np.concatenate([[0, units.total - 1], rng.choice(units.total, 1000)]))
    wrong = [int(u) for u in check if not index.store.text(int(u)).endswith(f"[syn {u}]")]
    if wrong:
        raise SystemExit(f"unit ids do not follow the synthetic numbering (e.g. unit {wrong[0]}); rebuild")
    encoder = Encoder(EncoderConfig(show_progress=False))
    dev = encoder.encode_queries(questions, encoder.default_instruction())  # as the server encodes a bare question
    contention = encode_probe(encoder, questions[:20])
    del encoder
    n = len(questions)
    sample = np.sort(rng.choice(units.total, max(n, 10_000), replace=False))
    vectors = units.vectors(sample)
    near = held_aside_queries(vectors, n, seed, DEFAULT_QUERY_NOISE)
    selves = vectors[rng.choice(len(sample), 200, replace=False)]
    started = time.perf_counter()
    truth = exact_ground_truth(np.vstack([dev, near, selves]), units.chunks(), 11)
    exact_s = time.perf_counter() - started
    started = time.perf_counter()
    _, found = index.shards.search(np.vstack([dev, near]), 10)
    search_s = time.perf_counter() - started
    result = {"path": "in-process Index.load(...).shards.search with the manifest's tuned parameters "
                      "(the server takes text queries only; gRPC congruence is checked separately)",
              "k": 10, "dev_questions": round(float(knn_intersection_measure(found[:n], truth[:n, :10])), 4),
              "perturbed_units": round(float(knn_intersection_measure(found[n:], truth[n:2 * n, :10])), 4),
              "queries_each": n, "perturbed_noise": DEFAULT_QUERY_NOISE, "exact_search_s": round(exact_s, 1),
              "index_search_ms_per_query_batched": round(search_s * 1000 / (2 * n), 3)}
    neighbours = {"cosine_to_base": spread(np.einsum("ij,ij->i", vectors, units.bases.vectors[units.base_of(sample)])),
                  "cosine_to_10th_neighbour": spread(np.einsum("ij,ij->i", selves, units.vectors(truth[2 * n:, 10])))}
    expected = {q: [int(u) for u in row] for q, row in zip(questions[:congruence], found[:congruence])}
    return {**result, "synthetic_neighbours": neighbours, "query_encode_ms_by_torch_threads": contention}, expected


def encode_probe(encoder: Encoder, questions: list[str]) -> dict[str, float]:
    """Milliseconds to embed one question with 1 and with all torch threads (the server uses all).

    On a machine shared with other CPU work, OpenMP threads that wait for a busy core make the
    all-threads figure many times the one-thread figure; the server's latency then follows it.
    """
    import torch

    out = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        started = time.perf_counter()
        for question in questions:
            encoder.encode_queries([question])
        out[str(threads)] = round((time.perf_counter() - started) * 1000 / len(questions), 1)
    return out


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def served_rss(index_dir: Path) -> dict[str, Any]:
    """Start time and RSS after SERVING of a server on ``index_dir`` (the sample index: the fixed cost)."""
    started = time.perf_counter()
    # as the synthetic index is served (no canary re-encoding), so the two RSS figures differ by the index only
    server = load_test.ServerProcess(index_dir, 32, 40, extra=["--canary-units", "0"])
    try:
        return {"start_to_serving_s": round(time.perf_counter() - started, 2), **proc_status(server.process.pid)}
    finally:
        server.stop()


def serve(index_dir: Path, texts: list[str], expected: dict[str, list[int]], clients: list[int],
          duration: float, extra: list[str] | None = None) -> dict[str, Any]:
    """``retriever serve`` on the index: start time, RSS, gRPC hits against ``expected`` (unit ids per
    question: in-process hits, or exact search), latency per client count. ``extra``: serve flags."""
    import grpc

    started = time.perf_counter()
    server = load_test.ServerProcess(index_dir, 32, max(clients) + 8, extra=extra)
    out: dict[str, Any] = {"start_to_serving_s": round(time.perf_counter() - started, 2)}
    try:
        out["rss_after_serving"] = proc_status(server.process.pid)
        identical, overlap = 0, 0.0
        with grpc.insecure_channel(server.address) as channel:
            stub = load_test.retriever_pb2_grpc.RetrieverStub(channel)
            for query, ids in expected.items():
                got = [h.unit_id for h in stub.Retrieve(load_test.pb.RetrieveRequest(query=query, top_k=10),
                                                        timeout=60).hits]
                identical += got == ids
                overlap += len(set(got) & set(ids)) / max(1, len(ids))
        out["grpc_vs_in_process"] = {"queries": len(expected), "identical_top10": identical,
                                     "mean_overlap_at_10": round(overlap / max(1, len(expected)), 4)}
        load_test.drive(server.address, texts, 10, 1, min(2.0, duration))  # warm-up
        out["latency"] = {str(c): load_test.drive(server.address, texts, 10, c, duration) for c in clients}
        out["rss_after_load"] = proc_status(server.process.pid)
    finally:
        server.stop()
    return out


def cpu_info() -> dict[str, Any]:
    import faiss

    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name"), "cpu_count": os.cpu_count(),
            "avx512": sorted(f for f in flags if f.startswith("avx512")), "amx": sorted(f for f in flags if "amx" in f),
            "avx2": "avx2" in flags, "faiss": faiss.__version__, "faiss_compile": faiss.get_compile_options()}


def model_at(units: int, dimension: int = 384) -> dict[str, Any]:
    """What ``--factory auto`` chooses per source at ``units`` and the memory model's bytes for it."""
    out = {}
    for source, n in source_counts(units).items():
        choice = choose_factory(n, dimension, None)
        out[source] = {"units": n, "factory": choice.factory, "index_bytes": choice.estimated_bytes,
                       "bytes_per_unit": bytes_per_unit(choice.factory, dimension)}
    return out


def measure(args: argparse.Namespace, work: Path, units: SyntheticUnits, synthetic: dict[str, Any]) -> dict[str, Any]:
    index_dir = work / "index"
    runs = ([json.loads(line) for line in (work / "runs.jsonl").read_text().splitlines()]
            if (work / "runs.jsonl").is_file() else [])
    result: dict[str, Any] = {
        "name": args.name, "units": units.total, "work": str(work), "cpu": cpu_info(),
        "load_average_before": os.getloadavg(), "synthetic": synthetic, "build_runs": runs,
        "build_wall_s_all_runs": round(sum(r["wall_s"] for r in runs), 1),
        "build_peak_rss_bytes": max((r["peak_rss_bytes"] for r in runs), default=None),
        "index": memory_model(index_dir)}
    questions = load_test.load_queries(None, max(args.queries, 2000))
    result["recall"], expected = recall_vs_exact(index_dir, units, questions[:args.queries], args.seed, 50)
    # The fixed cost of a server (model, runtime, gRPC) on the small sample index, less its FAISS files.
    from retriever.sample import ensure_sample_index

    fixed_dir = ensure_sample_index(Encoder(EncoderConfig(show_progress=False)))
    base = {**served_rss(fixed_dir), "index": str(fixed_dir),
            "faiss_bytes": sum(f.stat().st_size for f in fixed_dir.glob("*.faiss"))}
    # The synthetic vectors are not the model's embeddings of their texts (cosine ~0.89 at sigma 0.5), so
    # the server's data canary would refuse the index: its re-encoding is off here (norms still checked).
    serving = serve(index_dir, questions, expected, [int(c) for c in args.clients.split(",")], args.duration,
                    extra=["--canary-units", "0"])
    serving["fixed_cost_server_on_sample_index"] = base
    serving["peak_rss_bytes"] = serving["rss_after_load"]["VmHWM"]
    serving["goal_rss_le_6GiB"] = serving["peak_rss_bytes"] <= 6 * GiB
    result["serving"] = serving
    model_bytes, file_bytes = result["index"]["model_index_bytes"], result["index"]["faiss_file_bytes"]
    delta = serving["rss_after_serving"]["VmRSS"] - (base["VmRSS"] - base["faiss_bytes"])
    result["memory_model_check"] = {
        "model_bytes_per_unit": round(model_bytes / units.total, 2),
        "file_bytes_per_unit": round(file_bytes / units.total, 2),
        "serving_rss_delta_bytes_per_unit": round(delta / units.total, 2),
        "file_over_model": round(file_bytes / model_bytes, 4),
        "serving_delta_over_model": round(delta / model_bytes, 4),
        "serving_delta_within_20pct": abs(delta / model_bytes - 1) <= 0.2,
        "note": "serving delta = server VmRSS after SERVING minus a server on the sample index (less its FAISS "
                "files): it also holds the unit store's source and part columns (5 B/unit, copied at open) "
                "and allocator slack"}
    result["model_at_10m"] = model_at(10_000_000)
    result["load_average_after"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=10_000_000,
                        help="synthetic units (default 10M: several hours on 2 cores, resumable)")
    parser.add_argument("--name", default=None, help="result and work name (default: 10m, or the unit count)")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default index_builds/scale-<name>)")
    parser.add_argument("--memory-budget", type=parse_bytes, default=None, metavar="SIZE",
                        help="FAISS memory budget of the whole index, e.g. 5GiB (default: none)")
    parser.add_argument("--min-recall", type=float, default=0.95,
                        help="the build's recall gate (a failed gate keeps the encoded parts: re-run with a lower one)")
    parser.add_argument("--skip-build", action="store_true", help="measure the index already in the work directory")
    parser.add_argument("--clients", default="1,32", help="concurrent gRPC clients per latency level")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per latency level")
    parser.add_argument("--queries", type=int, default=1000, help="recall queries of each kind")
    parser.add_argument("--sigma", type=float, default=0.5,
                        help="expected norm of the Gaussian added to a base vector (0.5: cosine ~0.89 to it)")
    parser.add_argument("--copies-per-base", type=int, default=200,
                        help="synthetic units per real base unit, when the base index is built here")
    parser.add_argument("--base-index", type=Path, default=None,
                        help="index whose units and vectors are the bases (default index_builds/mini if built)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="HeteroMix corpus (for a base index built here)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    args.name = args.name or ("10m" if args.units == 10_000_000 else str(args.units))
    work = (args.work or ROOT / "index_builds" / f"scale-{args.name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    if all(c <= EXACT_MAX_UNITS for c in source_counts(args.units).values()):
        raise SystemExit("every shard would be exact (Flat) at this size, and the server's canary refuses an exact "
                         "index whose vectors are not the model's: use --units 200000 or more")
    built = (work / "index" / "manifest.json").is_file()
    if args.skip_build and not built:
        raise SystemExit(f"--skip-build: {work / 'index'} is not a built index")
    units, synthetic = prepare(args, work)
    if not built:
        run_build(args, work)
    result = measure(args, work, units, synthetic)
    out = ROOT / "benchmarks" / "results" / f"scale_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

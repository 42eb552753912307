"""faiss-cpu against faiss-gpu on the CPU: install size and HNSW / IVF / Flat search speed, side by side.

    python benchmarks/faiss_wheels.py --python cpu=.venv/bin/python --python gpu=.venv-faiss-gpu/bin/python

Each ``NAME=INTERPRETER`` is a Python with one FAISS wheel installed (``make`` puts faiss-cpu in
``.venv`` on a machine without a GPU and ``make test-faiss-other`` faiss-gpu in
``.venv-faiss-gpu``). For each, in alternating rounds (``--rounds``, so drift on a shared machine
hits both alike), a child process builds the same seeded indexes over synthetic unit vectors
(``--vectors`` × 384, clustered like sentence embeddings) and times searches of the same queries
at k=10, one query at a time and in batches of 32: ``Flat``, ``HNSW32`` (efSearch 64) and
``IVF1024,SQ8`` (nprobe 16). It also records the FAISS version, the SIMD library the wheel loaded
and the on-disk size of the wheel's packages (faiss and, for faiss-gpu, the CUDA libraries it
pulls). Writes ``benchmarks/results/faiss_wheels_<name>.json``; figures depend on the machine and
its load: the JSON carries ``lscpu`` flags and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from retriever.machine import cpu_flags

ROOT = Path(__file__).resolve().parents[1]

#: Runs in the child interpreter (only faiss and numpy needed): prints one JSON object.
CHILD = r"""
import json, sys, time, importlib.metadata as md
from pathlib import Path
import numpy as np
import faiss

n, d, queries, seed = int(sys.argv[1]), 384, 1000, 0
rng = np.random.default_rng(seed)
centres = rng.standard_normal((256, d)).astype("float32")
xb = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, d)).astype("float32")
xq = centres[rng.integers(0, 256, queries)] + 0.6 * rng.standard_normal((queries, d)).astype("float32")
faiss.normalize_L2(xb)
faiss.normalize_L2(xq)

def timed_search(index):
    index.search(xq[:8], 10)  # warm-up
    t = time.perf_counter()
    for i in range(200):
        index.search(xq[i:i + 1], 10)
    one = 200 / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, queries, 32):
        index.search(xq[i:i + 32], 10)
    batch = queries / (time.perf_counter() - t)
    return {"qps_one_at_a_time": round(one, 1), "qps_batches_of_32": round(batch, 1)}

out = {"faiss_version": faiss.__version__,
       "simd_library": sorted(m for m in sys.modules if "swigfaiss" in m),
       "omp_threads": faiss.omp_get_max_threads()}
for factory, knob in (("Flat", None), ("HNSW32", ("efSearch", 64)), ("IVF1024,SQ8", ("nprobe", 16))):
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    if not index.is_trained:
        index.train(xb[:60000])
    index.add(xb)
    built = time.perf_counter() - t
    if knob is not None:
        faiss.ParameterSpace().set_index_parameter(index, *knob)
    out[factory] = {"build_seconds": round(built, 2), **timed_search(index)}

sizes = {}
for dist in md.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(("faiss", "nvidia-")):
        size = sum((p.size or 0) for p in (dist.files or []))
        sizes[name] = size
out["package_bytes"] = sizes
print(json.dumps(out))
"""


def run_child(python: str, vectors: int) -> dict[str, Any]:
    done = subprocess.run([python, "-c", CHILD, str(vectors)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def site_packages_bytes(python: str) -> int:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    path = Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", required=True, metavar="NAME=INTERPRETER",
                        help="a Python with one FAISS wheel; repeat for each wheel")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per wheel (the best is kept)")
    parser.add_argument("--name", default="run")
    args = parser.parse_args()
    pythons = dict(item.split("=", 1) for item in args.python)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    for r in range(args.rounds):
        for name, python in pythons.items():
            print(f"round {r + 1}/{args.rounds}: {name}...", file=sys.stderr)
            rounds[name].append(run_child(python, args.vectors))
    wheels: dict[str, Any] = {}
    for name, runs in rounds.items():
        best = dict(runs[0])
        for factory in ("Flat", "HNSW32", "IVF1024,SQ8"):
            best[factory] = {key: (min if key == "build_seconds" else max)(run[factory][key] for run in runs)
                             for key in runs[0][factory]}
        best["site_packages_bytes"] = site_packages_bytes(pythons[name])
        best["interpreter"] = pythons[name]
        wheels[name] = best
    result: dict[str, Any] = {
        "vectors": args.vectors, "dimension": 384, "rounds": args.rounds, "wheels": wheels,
        "cpu": cpu_flags(), "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }
    names = list(wheels)
    if len(names) == 2:
        a, b = names
        result[f"{a}_over_{b}_qps"] = {
            factory: {key: round(wheels[a][factory][key] / wheels[b][factory][key], 2)
                      for key in ("qps_one_at_a_time", "qps_batches_of_32")}
            for factory in ("Flat", "HNSW32", "IVF1024,SQ8")}
    out = ROOT / "benchmarks" / "results" / f"faiss_wheels_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

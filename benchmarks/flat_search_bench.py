"""Exact search: the faiss wheel's IndexFlatIP.search vs the project's path (exact_topk: torch's matrix
product, then topk_of), with NumPy's own matrix product (OpenBLAS) in front of the same topk_of as a
third column, and, where the processor multiplies bf16 natively, the project's bf16 first pass
(``exact_topk`` with a bf16 copy: bf16 scores, then the candidates again in float32) as a fourth.

    python benchmarks/flat_search_bench.py                 # seeded vectors, mini- and lite-sized
    python benchmarks/flat_search_bench.py --sizes 410000  # full-corpus size
    python benchmarks/flat_search_bench.py --sizes 86067 -k 10 100 --name lite

All three search the same seeded L2-normalised vectors in one process, one after the other per
batch, and must return the same ids. Writes ``benchmarks/results/flat_search[_<name>].json``; the
figures that matter are the ratios (faiss time / project time, NumPy BLAS time / project time) per
batch size. Run it with ``OPENBLAS_THREAD_TIMEOUT=4`` as the ``retriever`` command sets it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from retriever.index.shards import Bf16Copy, bf16_prefilter, exact_topk, faiss_module, topk_of
from retriever.machine import cpu_flags


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm: the first call may import and allocate
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[36302, 85000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("-k", type=int, nargs="+", default=[100])
    parser.add_argument("--name", default="", help="results go to flat_search_<name>.json")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    faiss = faiss_module()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        x = rng.standard_normal((n, args.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)
        view = np.asarray(faiss.rev_swig_ptr(index.get_xb(), n * args.dim)).reshape(n, args.dim)
        copy = Bf16Copy.of(view) if bf16_prefilter() else None
        for nq in args.batches:
            q = rng.standard_normal((nq, args.dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            for k in args.k:
                faiss_s, (_, faiss_ids) = timed(lambda: index.search(q, k), args.repeats)  # noqa: B023
                project_s, (_, project_ids) = timed(lambda: exact_topk(q, view, k), args.repeats)  # noqa: B023
                blas_s, (_, blas_cols) = timed(lambda: topk_of(q @ view.T, k), args.repeats)  # noqa: B023
                agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(faiss_ids, project_ids)]))
                blas_agree = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(blas_cols, project_ids)]))
                rows.append({"n": n, "nq": nq, "k": k, "faiss_ms": round(faiss_s * 1e3, 3),
                             "project_ms": round(project_s * 1e3, 3), "numpy_blas_ms": round(blas_s * 1e3, 3),
                             "faiss_over_project": round(faiss_s / project_s, 2),
                             "numpy_blas_over_project": round(blas_s / project_s, 2),
                             "id_agreement": round(agree, 4), "numpy_blas_id_agreement": round(blas_agree, 4)})
                if copy is not None:
                    bf16_s, (_, bf16_ids) = timed(lambda: exact_topk(q, view, k, copy), args.repeats)  # noqa: B023
                    rows[-1].update({"bf16_first_ms": round(bf16_s * 1e3, 3),
                                     "project_over_bf16_first": round(project_s / bf16_s, 2),
                                     "bf16_first_id_agreement": float(np.mean(
                                         [len(set(a) & set(b)) / k for a, b in zip(bf16_ids, project_ids)]))})
                print(json.dumps(rows[-1]))
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / (f"flat_search_{args.name}.json" if args.name else "flat_search.json")
    out.write_text(json.dumps({"faiss": faiss.__version__, "numpy": np.__version__, "cpu": cpu_flags(),
                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Side by side with a dedicated embedding server: infinity-emb embedding alone vs this server retrieving.

    python -m venv /work/venv-inf && /work/venv-inf/bin/pip install torch==2.13.0 'infinity-emb[server,torch]' \
        'transformers<4.49' 'sentence-transformers<4' 'numpy<2' 'pyarrow<20' 'pandas<3'
    python benchmarks/embedding_server_compare.py --infinity /work/venv-inf/bin/infinity_emb \\
        --model /work/models/heteromix --index index_builds/lite --serve-flags="--backend openvino"

The same model, machine, questions (HeteroMix dev) and client concurrency for both:

- **infinity-emb** (``infinity_emb v2``), each of ``--engines`` (``torch``; ``optimum``, ONNX
  Runtime, its recommended CPU engine, does not run beside torch 2.13: optimum 1.27 imports
  ``torch.onnx`` internals that torch removed, and optimum 2.1 refuses the ONNX path infinity 0.0.78
  hands it), one bare question per ``POST /embeddings`` (OpenAI-style; ours also encodes the model's
  ~17-token instruction), clients that send back to back; embedding only, no search;
- **this server** (``retriever serve`` on ``--index`` with ``--serve-flags``): one question per
  gRPC ``Retrieve`` (dense, top 10): embedding *and* search, with the dynamic batcher.

Each level runs ``--duration`` seconds after a warm-up; QPS, p50 and p99 per level. Infinity runs in
its own virtual environment (it pins transformers < 5, this project needs >= 5). Writes
``benchmarks/results/embedding_server_<name>.json`` and prints it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import load_test  # noqa: E402

from retriever.machine import cpu_flags  # noqa: E402


def st3_copy(model_dir: Path, out: Path) -> Path:
    """The model as sentence-transformers 3 lays it out (infinity-emb pins it < 4): the same weights
    (hard-linked or copied), tokenizer and transformer config, mean pooling and normalisation, and no
    exports (infinity's file lookup trips on several)."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    (out / "1_Pooling").mkdir(parents=True)
    (out / "2_Normalize").mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(model_dir / name, out / name)
    for name in ("special_tokens_map.json", "vocab.txt"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    dim = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    max_len = json.loads((model_dir / "tokenizer_config.json").read_text()).get("model_max_length", 256)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": min(int(max_len), 512),
                                                                "do_lower_case": False}))
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": dim, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    return out


class Infinity:
    """``infinity_emb v2`` in a child process, ready when ``/health`` answers."""

    def __init__(self, binary: str, model: str, engine: str, batch_size: int, dtype: str = "auto",
                 timeout: float = 600.0) -> None:
        self.port = load_test.free_port()
        self.model = model
        log = ROOT / "logs" / f"infinity_{engine}_{dtype}.log"
        log.parent.mkdir(exist_ok=True)
        self.log = log.open("w")
        cmd = [binary, "v2", "--model-id", model, "--engine", engine, "--device", "cpu", "--batch-size",
               str(batch_size), "--dtype", dtype, "--port", str(self.port), "--host", "127.0.0.1"]
        started = time.perf_counter()
        env = {**os.environ, "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise SystemExit(f"infinity exited with {self.process.returncode}; see {log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"infinity did not become healthy in {timeout:.0f}s; see {log}")
        self.start_s = round(time.perf_counter() - started, 1)

    def stop(self) -> None:
        load_test.stop_process(self.process)
        self.log.close()


def drive_http(port: int, model: str, queries: list[str], clients: int, duration: float) -> dict[str, Any]:
    """``clients`` threads POST one question each to /embeddings, back to back, for ``duration`` s."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.perf_counter() + duration

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = n * 7919
        while time.perf_counter() < stop_at:
            body = json.dumps({"model": model, "input": [queries[i % len(queries)]]})
            t = time.perf_counter()
            try:
                conn.request("POST", "/embeddings", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                if response.status == 200 and json.loads(data)["data"][0]["embedding"]:
                    latencies[n].append(time.perf_counter() - t)
                else:
                    errors[n] += 1
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                errors[n] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            i += 1
        conn.close()

    seconds = load_test.run_clients(client, clients)
    return load_test.summary([x for per in latencies for x in per], seconds, sum(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--infinity", default="infinity_emb", help="the infinity_emb executable (its own venv)")
    parser.add_argument("--model", required=True,
                        help="the index's model directory; infinity loads a copy with the same weights and the "
                        "configs its sentence-transformers 3 reads (written to logs/infinity-model)")
    parser.add_argument("--index", type=Path, default=ROOT / "index_builds" / "lite")
    parser.add_argument("--serve-flags", default="", help="extra `retriever serve` flags (one string)")
    parser.add_argument("--engines", default="torch", help="infinity engines to run, comma-separated")
    parser.add_argument("--dtypes", default="auto",
                        help="infinity's --dtype values to run with each engine, comma-separated (auto: float32 on a "
                        "CPU; bfloat16 is its fastest on processors with bf16 units, as ours)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=32, help="infinity's batch size (ours: --max-batch 32)")
    parser.add_argument("--limit", type=int, default=2000, help="dev questions")
    parser.add_argument("--name", default="lite")
    args = parser.parse_args()
    queries = load_test.load_queries(None, args.limit)
    clients = [int(c) for c in args.clients.split(",")]
    result: dict[str, Any] = {"name": args.name, "model": args.model, "index": str(args.index), "cpu": cpu_flags(),
                              "load_average_before": os.getloadavg(), "clients": clients,
                              "duration_s": args.duration, "queries": len(queries), "infinity": {}}
    python = Path(args.infinity).resolve().parent / "python"  # the venv's interpreter
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('infinity_emb'))"],
                             capture_output=True, text=True, check=False)
    result["infinity_version"] = version.stdout.strip() or None
    runs = [(e, d) for e in args.engines.split(",") if e for d in args.dtypes.split(",") if d]
    for engine, dtype in runs:
        label = engine if dtype == "auto" else f"{engine}/{dtype}"
        server = Infinity(args.infinity, str(st3_copy(Path(args.model), ROOT / "logs" / "infinity-model")), engine,
                          args.batch_size, dtype)
        try:
            drive_http(server.port, args.model, queries, 1, min(3.0, args.duration))  # warm-up
            result["infinity"][label] = {"start_s": server.start_s, "levels": {
                str(c): drive_http(server.port, args.model, queries, c, args.duration) for c in clients}}
        finally:
            server.stop()
        print(json.dumps({label: result["infinity"][label]}), file=sys.stderr)
    extra = shlex.split(args.serve_flags)
    started = time.perf_counter()
    ours = load_test.ServerProcess(args.index, 32, max(clients) + 8, extra=extra)
    try:
        start_s = round(time.perf_counter() - started, 1)
        load_test.drive(ours.address, queries, 10, 1, min(3.0, args.duration))  # warm-up
        result["retriever"] = {"serve_flags": extra, "start_s": start_s, "levels": {
            str(c): load_test.drive(ours.address, queries, 10, c, args.duration) for c in clients}}
    finally:
        ours.stop()
    top = str(max(clients))
    best = max(result["infinity"].items(), key=lambda kv: kv[1]["levels"][top]["qps"]) if result["infinity"] else None
    if best is not None:
        result["at_max_clients"] = {
            "clients": int(top), "retriever_qps": result["retriever"]["levels"][top]["qps"],
            "infinity_best_engine": best[0], "infinity_qps": best[1]["levels"][top]["qps"],
            "ratio": round(result["retriever"]["levels"][top]["qps"] / best[1]["levels"][top]["qps"], 3)}
    result["load_average_after"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / f"embedding_server_{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

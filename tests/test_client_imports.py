"""The gRPC client stands alone: importing it loads no model, index or array library and sets no variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, sys
before = dict(os.environ)
import retriever.client
from retriever.client import RetrieverClient, RemoteResult
from retriever.query import Query
Query("q")
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({"modules": sorted(sys.modules), "changed": changed}))
"""

#: Heavy or engine-side modules the client must not pull in.
FORBIDDEN = ("torch", "faiss", "sentence_transformers", "transformers", "huggingface_hub", "numpy", "pyarrow",
             "bm25s", "retriever.encoder", "retriever.index", "retriever.searcher", "retriever.service.batching",
             "retriever.service.registry", "retriever.service.server")


def test_importing_the_client_loads_no_engine_and_sets_no_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                          check=True, cwd=ROOT)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    loaded = [m for m in report["modules"] if m in FORBIDDEN or any(m.startswith(f + ".") for f in FORBIDDEN)]
    assert loaded == []
    assert "grpc" in report["modules"] and "retriever.service.proto.retriever_pb2_grpc" in report["modules"]
    assert report["changed"] == []  # HF_HUB_OFFLINE in particular is set only where a model loads

"""The committed stubs in retriever/service/proto/ are exactly what protos/ generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "retriever" / "service" / "proto"


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is not installed")
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = tmp_path / "retriever" / "service" / "proto"
    generated = sorted(p.name for p in fresh.iterdir())
    assert generated == ["retriever_pb2.py", "retriever_pb2.pyi", "retriever_pb2_grpc.py"]
    for name in generated:
        assert (STUBS / name).read_text() == (fresh / name).read_text(), (
            f"{name} is stale: run `python protos/generate.py` and commit the result")


def test_proto_hygiene():
    from retriever.service.proto import retriever_pb2 as pb

    assert pb.DESCRIPTOR.package == "retriever.v1"
    source = pb.DESCRIPTOR.enum_types_by_name["Source"]
    assert source.values_by_number[0].name == "SOURCE_UNSPECIFIED"
    assert all(v.name.startswith("SOURCE_") for v in source.values)
    service = pb.DESCRIPTOR.services_by_name["Retriever"]
    inputs = [m.input_type.name for m in service.methods]
    outputs = [m.output_type.name for m in service.methods]
    assert len(set(inputs)) == len(inputs) and len(set(outputs)) == len(outputs)
    assert all(m.input_type.name == f"{m.name}Request" and m.output_type.name == f"{m.name}Response"
               for m in service.methods)

"""Regenerate the committed Python stubs in ``retriever/service/proto/`` from ``protos/``.

    python protos/generate.py            # rewrite the committed stubs (run after editing a .proto)
    python protos/generate.py --out DIR  # write them under DIR instead (the stub test diffs this)

The ``.proto`` is mapped to the virtual path ``retriever/service/proto/retriever.proto`` so the
generated modules import each other as ``retriever.service.proto.*`` (a plain ``-Iprotos`` would
produce ``from retriever.v1 import ...``, which collides with the ``retriever`` package). The
protobuf package stays ``retriever.v1``, so service and message names on the wire are unchanged.
Needs ``grpcio-tools`` (a dev dependency); the versions it writes into the stubs are the minimum
``grpcio``/``protobuf`` runtime versions, mirrored in ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ["retriever.proto"]
VIRTUAL_DIR = "retriever/service/proto"
SOURCE_DIR = ROOT / "protos" / "retriever" / "v1"


def generate(out: Path) -> None:
    """Run protoc (from grpc_tools) for every proto, writing ``<out>/retriever/service/proto/*``."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    for name in PROTOS:
        args = ["protoc", f"-I{VIRTUAL_DIR}={SOURCE_DIR}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}", f"{VIRTUAL_DIR}/{name}"]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository root)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())

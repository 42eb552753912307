"""What the benchmarks record about the machine next to every speed figure (imported by the scripts here)."""

from __future__ import annotations

import os
import subprocess

SIMD_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
              "amx_int8", "amx_tile")


def cpu_flags() -> dict[str, object]:
    """The model name and the SIMD flags of ``lscpu`` that decide which kernels run."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "").strip(), "cpus": os.cpu_count(),
            "simd": sorted(f for f in SIMD_FLAGS if f in flags),
            "missing": sorted(f for f in SIMD_FLAGS if f not in flags)}

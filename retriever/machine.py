"""The processor: what the benchmarks record next to every speed figure, and what ``--backend auto`` keys on."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

SIMD_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16",
              "amx_int8", "amx_tile")


#: Flags of processors that compute in bfloat16 natively (elsewhere bf16 is emulated, several times slower).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> dict[str, Any]:
    """The model name and the SIMD flags of ``lscpu`` that decide which kernels run."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:  # no lscpu (macOS, minimal images): nothing known, so nothing assumed
        out = ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "").strip(), "cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
            "simd": sorted(f for f in SIMD_FLAGS if f in flags),
            "missing": sorted(f for f in SIMD_FLAGS if f not in flags)}


#: cgroup v2's CPU quota of this process's group: "max 100000" (none) or "200000 100000" (2 CPUs).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """The processors this process may run on: its CPU affinity (``taskset``, a container's cpuset),
    lowered to a cgroup v2 CPU quota (``docker --cpus``) rounded up; ``os.cpu_count()`` counts the
    whole machine's and would start a thread per processor it cannot use."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text(encoding="ascii").split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def has_native_bf16() -> bool:
    """Whether this processor computes in bfloat16 natively (AVX512_BF16 or AMX)."""
    return any(flag in cpu_flags()["simd"] for flag in BF16_FLAGS)

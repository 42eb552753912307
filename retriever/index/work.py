"""The resumable state of one index build: its plan, encoded parts and build journal.

A build works in ``.NAME.build/`` beside its output directory ``NAME`` until it publishes:

- ``plan.json`` (written last, atomically, when planning finished): what is being built (the
  build key: corpus and id-list fingerprint, model checksum, linearizer, window size, part size),
  the unit counts per source and the list of parts;
- ``units.arrow``: the unit store of the build, in unit-id order;
- ``parts/part-NNNNNN.npy``: the float32 vectors of one part (a contiguous unit range inside
  one source), each written to a temporary name, fsynced and renamed;
- ``journal.jsonl``: one line per finished part with its SHA-256, appended and fsynced after
  the part's file is in place;
- ``lock``: held (``flock``) by the running builder, so two builders never share the state.

A builder killed at any instant leaves parts that are either journalled and whole or ignored;
``--resume`` re-encodes only the parts the journal does not vouch for. The published index
directory is still written all-or-nothing by :mod:`retriever.index.files`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from retriever.errors import InvalidInputError
from retriever.index.files import fsync_dir, fsync_file, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
JOURNAL_NAME = "journal.jsonl"
PARTS_DIR = "parts"
WORK_UNITS_NAME = "units.arrow"


def work_dir_for(out: Path) -> Path:
    """Where the build of ``out`` keeps its resumable state."""
    return out.parent / f".{out.name}.build"


@dataclass(frozen=True)
class PartSpec:
    """A contiguous range of unit ids inside one source, encoded as one piece of work."""

    part: int
    source: str
    start: int
    count: int

    @property
    def file(self) -> str:
        return f"part-{self.part:06d}.npy"


@dataclass(frozen=True)
class BuildPlan:
    """What a build produces; ``key`` must match for ``--resume`` to reuse encoded parts."""

    key: dict[str, Any]
    counts: dict[str, int]
    records: dict[str, int]
    parts: list[PartSpec]
    units_sha256: str

    @property
    def total_units(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildPlan:
        values = dict(data)
        values["parts"] = [PartSpec(**p) for p in data["parts"]]
        return cls(**values)


def split_parts(counts: dict[str, int], order: list[str], part_size: int) -> list[PartSpec]:
    """Cut each source's unit range into parts of ``part_size`` units (the last one shorter)."""
    parts: list[PartSpec] = []
    start = 0
    for source in order:
        count = counts.get(source, 0)
        for offset in range(0, count, part_size):
            parts.append(PartSpec(len(parts), source, start + offset, min(part_size, count - offset)))
        start += count
    return parts


@dataclass(frozen=True)
class JournalEntry:
    part: int
    rows: int
    dimension: int
    sha256: str
    seconds: float


class BuildWork:
    """The work directory of one build, locked by this process while it is open."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, out: Path) -> BuildWork:
        """Lock (creating if needed) the work directory of ``out``; what it holds is kept.

        Raises:
            InvalidInputError: another builder holds the directory.
        """
        path = work_dir_for(out)
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InvalidInputError(f"another build of {out} is running (it holds {path}/lock)") from None
        return cls(path, fd)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def clear(self, keep: Callable[[str], bool] = lambda name: False) -> None:
        """Forget every plan and part (the lock stays held), except the files whose name ``keep`` accepts."""
        for child in self.path.iterdir():
            if child.name == "lock" or keep(child.name):
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def remove(self) -> None:
        """Delete the work directory (after the index was published)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.close()

    @property
    def units_path(self) -> Path:
        return self.path / WORK_UNITS_NAME

    @property
    def parts_dir(self) -> Path:
        return self.path / PARTS_DIR

    def read_plan(self) -> BuildPlan | None:
        path = self.path / PLAN_NAME
        if not path.is_file() or not self.units_path.is_file():
            return None
        try:
            return BuildPlan.from_json(orjson.loads(path.read_bytes()))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            logger.warning("%s is unreadable (%s); planning again", path, exc)
            return None

    def write_plan(self, plan: BuildPlan) -> None:
        fsync_file(self.units_path)
        write_json_atomic(self.path / PLAN_NAME, plan.to_json())

    def journal(self) -> dict[int, JournalEntry]:
        """Journalled parts; a torn last line (the builder died while appending) is ignored."""
        path = self.path / JOURNAL_NAME
        entries: dict[int, JournalEntry] = {}
        if not path.is_file():
            return entries
        for line in path.read_bytes().splitlines():
            try:
                entry = JournalEntry(**orjson.loads(line))
            except (orjson.JSONDecodeError, TypeError):
                continue
            entries[entry.part] = entry
        return entries

    def finished_parts(self, plan: BuildPlan) -> dict[int, JournalEntry]:
        """Journalled parts whose file is present with the journalled size and SHA-256."""
        good: dict[int, JournalEntry] = {}
        specs = {p.part: p for p in plan.parts}
        for part, entry in self.journal().items():
            spec = specs.get(part)
            file = self.parts_dir / spec.file if spec else None
            if spec is None or file is None or not file.is_file() or entry.rows != spec.count:
                continue
            if sha256_file(file) != entry.sha256:
                logger.warning("part %d: %s does not match its journalled SHA-256; it is encoded again", part, file)
                continue
            good[part] = entry
        return good

    def record_part(self, spec: PartSpec, vectors: np.ndarray, seconds: float) -> JournalEntry:
        """Write one part's vectors (atomically) and journal it."""
        if vectors.shape[0] != spec.count or vectors.dtype != np.float32 or vectors.ndim != 2:
            raise ValueError(f"part {spec.part}: expected float32 [{spec.count}, d], got {vectors.dtype} "
                             f"{list(vectors.shape)}")
        self.parts_dir.mkdir(exist_ok=True)
        final = self.parts_dir / spec.file
        tmp = final.with_name(f".{final.name}.tmp")
        with tmp.open("wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors), allow_pickle=False)
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(self.parts_dir)
        entry = JournalEntry(spec.part, spec.count, int(vectors.shape[1]), sha256_file(final), round(seconds, 3))
        with (self.path / JOURNAL_NAME).open("ab") as fh:
            fh.write(orjson.dumps(asdict(entry)) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return entry

    def vectors(self, spec: PartSpec) -> np.ndarray:
        """One part's vectors, memory-mapped read-only."""
        array = np.load(self.parts_dir / spec.file, mmap_mode="r", allow_pickle=False)
        return np.asarray(array)

    def iter_vectors(self, plan: BuildPlan, source: str) -> Iterator[np.ndarray]:
        """The vectors of one source, part by part, in unit-id order."""
        for spec in plan.parts:
            if spec.source == source:
                yield self.vectors(spec)

"""Crash-safe file writing and checksums for index directories."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, value: object) -> None:
    """Write JSON to a temporary file in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final`` that is removed unless the caller renamed it away.

    Build into it, then call :func:`publish_dir`; on any exception it is deleted, so a
    failed build never leaves partial output.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(staged: Path, final: Path, overwrite: bool) -> None:
    """Move a finished build into place.

    A new name appears in one rename. Replacing an existing directory renames the old one
    aside first, then the new one in, then deletes the old one; a reader sees either the
    old or the new build, and a crash in between leaves the old one beside as ``.NAME.old-*``.
    """
    for path in staged.iterdir():
        if path.is_file():
            fsync_file(path)
    fsync_dir(staged)
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists (use --overwrite to replace it)")
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / "build")
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    fsync_dir(final.parent)

"""Crash-safe file writing and checksums for index directories."""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
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


def make_dir_unique(parent: Path, prefix: str) -> Path:
    """Create a new directory ``parent/<prefix><random>`` with the mode any ``mkdir`` gives.

    That is 0o777 less the umask (``drwxr-xr-x`` under the usual 022), like the files written into
    it, so a published index is readable by whoever may read its parent. ``tempfile.mkdtemp``
    would make it 0o700, and the rename that publishes it would keep that: an index the server's
    group could not read.
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"cannot create a unique directory {prefix}* in {parent}")


@contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final`` that is removed unless the caller renamed it away.

    Build into it, then call :func:`publish_dir`; on any exception it is deleted, so a
    failed build never leaves partial output. A builder killed outright (SIGKILL, power loss)
    cannot clean up: its directory carries its pid (``.NAME.building-<pid>-*``) and the next
    build of the same name removes the directories of builders that are no longer running.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final)
    tmp = make_dir_unique(final.parent, f".{final.name}.building-{os.getpid()}-")
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_stale(final: Path) -> list[Path]:
    """Remove ``final``'s staging and retired directories left behind by builders that died.

    A directory is removed only when the pid in its name is not a running process, so a
    concurrent build of the same name keeps its staging directory. Returns what was removed.
    """
    removed = []
    for path in final.parent.glob(f".{glob.escape(final.name)}.*-*"):
        kind, _, rest = path.name[len(final.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind not in ("building", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(errno, os.strerror(errno), str(a))


def publish_dir(staged: Path, final: Path, overwrite: bool) -> None:
    """Move a finished build into place.

    A new name appears in one rename. An existing directory is replaced by one atomic
    exchange (``renameat2(RENAME_EXCHANGE)`` on Linux), after which the old build, now at the
    staging path, is deleted: a reader, or a crash at any instant, sees either the complete
    old build or the complete new one. Where the exchange is unsupported the old directory is
    renamed aside first (``.NAME.old-<pid>-*``), leaving a moment in which ``final`` is absent.
    """
    for path in staged.iterdir():
        if path.is_file():
            fsync_file(path)
    fsync_dir(staged)
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists (use --overwrite to replace it)")
        if _exchange(staged, final):
            fsync_dir(final.parent)
            shutil.rmtree(staged, ignore_errors=True)  # the old build now lives here
            return
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
        os.replace(final, old / "build")
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    fsync_dir(final.parent)

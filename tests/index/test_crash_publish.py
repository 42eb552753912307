"""RELIABILITY E: a builder killed at random moments never leaves a partial published index.

The published directory is swapped in with one atomic exchange; a killed builder's staging
directory carries its pid and is swept by the next build of the same name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retriever.index import Index
from retriever.index import files as index_files
from retriever.index.files import publish_dir, staging_dir, sweep_stale
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _dir_with(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text(content)
    return path


def test_publish_replaces_a_build_in_one_exchange(tmp_path: Path) -> None:
    final = _dir_with(tmp_path / "idx", "old")
    staged = _dir_with(tmp_path / ".idx.building-1-x", "new")
    if not index_files._exchange(staged, final):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this filesystem")
    assert (final / "manifest.json").read_text() == "new"  # both names exist throughout; contents swapped
    assert (staged / "manifest.json").read_text() == "old"
    assert index_files._exchange(staged, final)  # and back
    assert (final / "manifest.json").read_text() == "old"
    publish_dir(staged, final, overwrite=True)
    assert (final / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_publish_falls_back_to_rename_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_files, "_exchange", lambda a, b: False)
    final = _dir_with(tmp_path / "idx", "old")
    with staging_dir(final) as staged:
        (staged / "manifest.json").write_text("new")
        publish_dir(staged, final, overwrite=True)
    assert (final / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_published_builds_get_the_modes_of_the_umask(tmp_path: Path, umask: int, dir_mode: int,
                                                      file_mode: int) -> None:
    final = tmp_path / "idx"
    previous = os.umask(umask)
    try:
        with staging_dir(final) as staged:
            (staged / "manifest.json").write_text("new")
            publish_dir(staged, final, overwrite=False)
    finally:
        os.umask(previous)
    assert final.stat().st_mode & 0o777 == dir_mode  # tempfile.mkdtemp would give 0o700
    assert (final / "manifest.json").stat().st_mode & 0o777 == file_mode


def test_a_real_build_is_readable_by_the_group(tiny_index_dir: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert tiny_index_dir.stat().st_mode & 0o777 == 0o777 & ~umask
    assert umask & 0o040 or tiny_index_dir.stat().st_mode & 0o050 == 0o050  # group r-x unless the umask denies it
    for path in tiny_index_dir.iterdir():
        assert path.stat().st_mode & 0o666 == 0o666 & ~umask, path


def test_leftovers_of_dead_builders_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    final = tmp_path / "idx"
    dead = _dir_with(tmp_path / f".idx.building-{_dead_pid()}-abc", "partial")
    retired = _dir_with(tmp_path / f".idx.old-{_dead_pid()}-def", "old")
    live = _dir_with(tmp_path / f".idx.building-{os.getppid()}-ghi", "someone else's build")
    other = _dir_with(tmp_path / f".idx2.building-{_dead_pid()}-jkl", "another index")
    assert sorted(sweep_stale(final)) == sorted([dead, retired])
    assert live.exists() and other.exists()


def test_kill_9_during_rebuilds_leaves_the_old_or_the_new_build(tmp_path: Path, tiny_index_dir: Path,
                                                                   tiny_records: list[dict]) -> None:
    """Rebuild over a served directory K times, SIGKILL each builder at a random moment."""
    out = tmp_path / "idx"
    shutil.copytree(tiny_index_dir, out)
    corpora = [Path(json.loads((out / "manifest.json").read_text())["corpus_path"]),
               write_jsonl(tmp_path / "smaller.jsonl", tiny_records[::2])]
    allowed = {str(c) for c in corpora}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(20261124)

    def command(corpus: Path) -> list[str]:
        return [sys.executable, "-m", "retriever", "build-index", str(corpus), "--out", str(out), "--overwrite",
                "--no-progress"]

    started = time.perf_counter()
    subprocess.run(command(corpora[1]), check=True, env=env, capture_output=True, cwd=tmp_path)
    full_build = time.perf_counter() - started
    Index.load(out)

    for attempt in range(4):
        process = subprocess.Popen(command(corpora[attempt % 2]), env=env, cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.1) * full_build)
        process.kill()
        process.wait()
        index = Index.load(out)  # verifies every file's size and SHA-256 against the manifest
        assert index.manifest.corpus_path in allowed
        # At most the killed builder's own staging directory, besides its resumable work directory.
        staged = [p for p in tmp_path.iterdir() if p.name.startswith(".idx.") and p.name != ".idx.build"]
        assert len(staged) <= 1, staged

    subprocess.run(command(corpora[0]), check=True, env=env, capture_output=True, cwd=tmp_path)
    assert Index.load(out).manifest.corpus_path == str(corpora[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "smaller.jsonl"]

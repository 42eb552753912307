"""Hostile index directories: manifests that lie field by field, and data that no longer matches.

Every case rewrites the file hashes in the manifest to match (as anyone able to edit the files
can), so only the manifest schema, the store-order check, the FAISS reader's limits and the data
canary stand between the directory and the server. Each fixture is built here from the tiny index.
"""

from __future__ import annotations

import json
import resource
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from retriever.errors import CorruptIndexError, InsufficientMemoryError
from retriever.index import BuildConfig, Index, UnitStore, build_index
from retriever.index.manifest import MANIFEST_NAME
from retriever.index.store import UNITS_NAME
from retriever.index.verify import run_data_canary
from tests.conftest import edit_manifest, rehash


def shard(data: dict, source: str) -> dict:
    return next(s for s in data["shards"] if s["source"] == source)


# -- manifests that lie -------------------------------------------------------------------------
def _copy_kb_entry_over_table(data: dict) -> None:
    data["shards"][data["shards"].index(shard(data, "table"))] = dict(shard(data, "kb"))


def _swap_table_and_kb_keeping_ranges(data: dict) -> None:
    shards = data["shards"]
    shards[1], shards[2] = shards[2], shards[1]
    start = 0
    for entry in shards:
        entry["start"], start = start, start + entry["count"]


MANIFEST_CASES: dict[str, tuple[Callable[[dict], object], str]] = {
    "unknown source": (lambda d: shard(d, "kb").update(source="evil"), r"shards\[2\]\.source: 'evil' is not a source"),
    "table entry replaced by the kb entry": (_copy_kb_entry_over_table, r"shards\[1\]\.start: \d+, but the shards before"),
    "start moved": (lambda d: shard(d, "table").update(start=shard(d, "table")["start"] + 10_000),
                    r"shards\[1\]\.start: \d+, but the shards before it end at"),
    "count as a string": (lambda d: d["counts"].update(text="5"), r"counts\.text: expected an integer, got str"),
    "count disagrees": (lambda d: d["counts"].update(text=d["counts"]["text"] + 1),
                        r"shards\[0\]\.count: \d+, but counts\.text is"),
    "boolean dimension": (lambda d: d.update(dimension=True), r"dimension: expected an integer, got bool"),
    "huge dimension": (lambda d: d.update(dimension=1 << 30), r"dimension: \d+ is out of range"),
    "unknown field": (lambda d: d.update(evil=1), r"\(top level\): unknown field\(s\) evil"),
    "missing field": (lambda d: d.pop("shards"), r"\(top level\): missing shards"),
    "file outside the directory": (lambda d: d["files"][0].update(name="../units.arrow"),
                                   r"files\[0\]\.name: '\.\./units\.arrow' is not a plain file name"),
    "file listed twice": (lambda d: d["files"].append(dict(d["files"][0])), r"files\[\d\]\.name: .* is listed twice"),
    "hash not hex": (lambda d: d["files"][0].update(sha256="z" * 64), r"files\[0\]\.sha256: expected 64"),
    "negative size": (lambda d: d["files"][0].update(bytes=-1), r"files\[0\]\.bytes: -1 is out of range"),
    "two shards share a file": (lambda d: shard(d, "table").update(file=shard(d, "text")["file"]),
                                r"shards\[1\]\.file: .* is the file of another shard too"),
    "shard file is the unit store": (lambda d: shard(d, "text").update(file=UNITS_NAME),
                                     r"shards\[0\]\.file: .* is not one of the listed FAISS files"),
    "shards out of order": (lambda d: d["shards"].reverse(), r"shards\[0\]\.start: \d+, but the shards before it end at 0"),
    "sources out of order": (_swap_table_and_kb_keeping_ranges,
                             r"shards\[2\]\.source: 'table' after 'kb': shards must follow the source order"),
    "recall above 1": (lambda d: shard(d, "text").update(recall_at_10=1.5), r"shards\[0\]\.recall_at_10"),
    "unknown search knob": (lambda d: shard(d, "text").update(search={"evil": 3}), r"unknown parameter 'evil'"),
    "zero nprobe": (lambda d: shard(d, "text").update(search={"nprobe": 0}), r"search\.nprobe: 0 is out of range"),
    "units without a shard": (lambda d: d["shards"].pop(), r"counts\.infobox: \d+ units but no shard holds them"),
    "other metric": (lambda d: d.update(metric="l2"), r"metric: 'l2' is not supported"),
    "prompts not strings": (lambda d: d.update(prompts={"query": 1}), r"prompts: expected an object of strings"),
    "unknown backend": (lambda d: d["encoding"].update(backend="tensorrt"), r"encoding\.backend: 'tensorrt' is not a backend"),
    "unknown precision": (lambda d: d["encoding"].update(precision="int4"), r"encoding\.precision: 'int4' is not a precision"),
    "export without its checksum": (lambda d: d["encoding"].update(backend="onnx"),
                                    r"encoding\.export_sha256: required for an exported backend"),
    "unknown encoding field": (lambda d: d["encoding"].update(device="cpu"), r"encoding: unknown field\(s\) device"),
    "link rows as a string": (lambda d: d["build"].update(link_rows="2"), r"build\.link_rows: expected an integer"),
    "negative link rows": (lambda d: d["build"].update(link_rows=-1), r"build\.link_rows: -1 is out of range"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_a_lying_manifest_is_refused_naming_the_field(case: str, tiny_index_dir: Path, tmp_path: Path) -> None:
    change, message = MANIFEST_CASES[case]
    bad = Path(shutil.copytree(tiny_index_dir, tmp_path / "bad"))
    edit_manifest(bad, change)
    with pytest.raises(CorruptIndexError, match=message):
        Index.load(bad, use_gpu=False)


def test_an_index_from_before_encodings_were_recorded_reads_as_torch_float32(tiny_index_dir: Path,
                                                                            tmp_path: Path) -> None:
    assert Index.load(tiny_index_dir, use_gpu=False).manifest.encoding == {"backend": "torch", "precision": "float32"}
    old = Path(shutil.copytree(tiny_index_dir, tmp_path / "old"))
    edit_manifest(old, lambda d: d.pop("encoding"))
    assert "encoding" not in json.loads((old / MANIFEST_NAME).read_text())
    assert Index.load(old, use_gpu=False).manifest.encoding == {"backend": "torch", "precision": "float32"}


def test_a_reordered_unit_store_is_refused(tiny_index_dir: Path, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(tiny_index_dir, tmp_path / "bad"))
    store = UnitStore.open(bad / UNITS_NAME, len(Index.load(bad, use_gpu=False).store))
    units = [store.unit(i) for i in reversed(range(len(store)))]
    UnitStore.from_units(units).write(bad / UNITS_NAME)
    rehash(bad)
    with pytest.raises(CorruptIndexError, match=r"unit 0 in the unit store is a infobox unit, but the manifest's "
                                                r"text shard covers ids 0-"):
        Index.load(bad, use_gpu=False)


# -- FAISS files that lie -----------------------------------------------------------------------
def test_appended_bytes_after_a_faiss_index_are_refused(tiny_index_dir: Path, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(tiny_index_dir, tmp_path / "bad"))
    with (bad / "kb.faiss").open("ab") as fh:
        fh.write(b"\0" * 16)
    rehash(bad)
    with pytest.raises(CorruptIndexError, match=r"kb\.faiss: 16 bytes after the end of the FAISS index"):
        Index.load(bad, use_gpu=False)


def test_appended_bytes_after_the_unit_store_are_refused(tiny_index_dir: Path, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(tiny_index_dir, tmp_path / "bad"))
    with (bad / UNITS_NAME).open("ab") as fh:
        fh.write(b"\0" * 16)
    rehash(bad)
    with pytest.raises(CorruptIndexError, match=r"units\.arrow: not a complete Arrow IPC unit store"):
        Index.load(bad, use_gpu=False)


def test_a_faiss_header_claiming_a_huge_vector_is_refused_before_allocating(tiny_index_dir: Path,
                                                                            tmp_path: Path) -> None:
    bad = Path(shutil.copytree(tiny_index_dir, tmp_path / "bad"))
    data = bytearray((bad / "text.faiss").read_bytes())
    assert data[:4] == b"IxFI"  # IndexFlatIP: magic, d, ntotal, 2 dummies, is_trained, metric, then the codes
    offset = 4 + 4 + 8 + 8 + 8 + 1 + 4
    struct.pack_into("<Q", data, offset, 1 << 28)  # the codes claim 2^28 floats (1 GiB)
    (bad / "text.faiss").write_bytes(bytes(data))
    rehash(bad)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(CorruptIndexError, match=r"text\.faiss: unreadable FAISS file"):
        Index.load(bad, use_gpu=False)
    assert time.perf_counter() - started < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing allocated


def test_shards_larger_than_available_memory_are_not_read(tiny_index_dir: Path, monkeypatch) -> None:
    from retriever.index import loaded

    monkeypatch.setattr(loaded, "available_memory", lambda: 1024)

    def never(*args, **kwargs):
        raise AssertionError("a FAISS file was read")

    monkeypatch.setattr(loaded, "read_shard", never)
    with pytest.raises(InsufficientMemoryError, match=r"need 0\.\d+ GiB in memory, but only 0\.00 GiB"):
        Index.load(tiny_index_dir, use_gpu=False)


# -- data that no longer matches: the data canary -----------------------------------------------
def _flat_vectors(directory: Path, name: str) -> tuple[bytearray, int, int]:
    """The file's bytes, and the offset and count of its float32 vectors (an IndexFlat file)."""
    data = bytearray((directory / name).read_bytes())
    d, ntotal = struct.unpack_from("<iq", data, 4)
    offset = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 8
    return data, offset, d * ntotal


def negate_vectors(directory: Path, name: str, count: int) -> None:
    data, offset, n = _flat_vectors(directory, name)
    vectors = np.frombuffer(bytes(data[offset:offset + 4 * n]), np.float32).copy()
    dim = json.loads((directory / MANIFEST_NAME).read_text())["dimension"]
    vectors[: count * dim] *= -1
    data[offset:offset + 4 * n] = vectors.tobytes()
    (directory / name).write_bytes(bytes(data))


def flip_exponent_byte(directory: Path, name: str, component: int) -> None:
    data, offset, _ = _flat_vectors(directory, name)
    data[offset + 4 * component + 3] ^= 0x40  # the top exponent bit of one float (little-endian): ~1e37
    (directory / name).write_bytes(bytes(data))


def swap_units(directory: Path, a: int, b: int) -> None:
    store = UnitStore.open(directory / UNITS_NAME, len(Index.load(directory, use_gpu=False).store))
    units = [store.unit(i) for i in range(len(store))]
    units[a], units[b] = units[b], units[a]
    UnitStore.from_units(units).write(directory / UNITS_NAME)


def test_the_data_canary_passes_an_intact_index(tiny_index_dir: Path, encoder) -> None:
    index = Index.load(tiny_index_dir, use_gpu=False)
    report = run_data_canary(index, encoder.encode_documents, size=len(index.store), seed=1, budget_seconds=3600)
    assert report.sampled == len(index.store) and report.norms_checked == len(index.store)
    assert report.worst_cosine >= 0.999


@pytest.mark.parametrize("factory", ["IVF4,SQ8", "HNSW16", "IVF4,PQ96x4fsr,Refine(SQ8)"])
def test_the_data_canary_passes_intact_compressed_indexes(factory: str, tiny_corpus: Path, encoder,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "idx"
    build_index(BuildConfig(corpus=tiny_corpus, out=out, factory=factory, min_recall=0.5), encoder)
    index = Index.load(out, use_gpu=False)
    report = run_data_canary(index, encoder.encode_documents, size=len(index.store), seed=2, budget_seconds=3600)
    assert report.sampled == len(index.store) and report.norms_checked == 0
    assert report.worst_cosine >= 0.99


DATA_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "ten negated vectors": (lambda d: negate_vectors(d, "table.faiss", 10), r"unit \d+ \(table shard\) is not among"),
    "a flipped vector byte": (lambda d: flip_exponent_byte(d, "kb.faiss", 7),
                              r"stored vector of unit \d+ \(kb shard\) has norm"),
    "two swapped unit lines": (lambda d: swap_units(d, 3, 9), r"unit [39] \(text shard\) is not among"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_the_data_canary_catches_changed_data(case: str, tiny_index_dir: Path, encoder, tmp_path: Path) -> None:
    change, message = DATA_CASES[case]
    bad = Path(shutil.copytree(tiny_index_dir, tmp_path / "bad"))
    change(bad)
    rehash(bad)
    index = Index.load(bad, use_gpu=False)  # every file matches the (rewritten) manifest
    with pytest.raises(CorruptIndexError, match=message):
        run_data_canary(index, encoder.encode_documents, size=len(index.store), seed=3, budget_seconds=3600)


def test_the_default_sample_spreads_over_every_shard_and_keeps_each_shards_ends(tiny_index: Index) -> None:
    from retriever.index.verify import canary_sample

    sample = canary_sample(tiny_index, 16, seed=4)
    for info in tiny_index.manifest.shards:
        assert {info.start, info.start + info.count - 1} <= set(sample)
    assert canary_sample(tiny_index, 16, seed=4) == sample and canary_sample(tiny_index, 16, seed=5) != sample


def test_canary_units_zero_skips_the_re_encoding_but_not_the_norm_check(tiny_index_dir: Path, encoder,
                                                                        tmp_path: Path) -> None:
    from retriever.service.config import ServiceConfig
    from retriever.service.registry import IndexRegistry

    swapped = Path(shutil.copytree(tiny_index_dir, tmp_path / "swapped"))
    swap_units(swapped, 3, 9)
    rehash(swapped)
    every = len(Index.load(swapped, use_gpu=False).store)
    with pytest.raises(CorruptIndexError, match=r"is not among"):  # a canary that samples every unit catches it
        IndexRegistry(encoder, use_gpu=False, canary_units=every).publish("tiny", swapped)
    assert IndexRegistry(encoder, use_gpu=False, canary_units=0).publish("tiny", swapped).generation.number == 1
    flipped = Path(shutil.copytree(tiny_index_dir, tmp_path / "flipped"))
    flip_exponent_byte(flipped, "kb.faiss", 7)
    rehash(flipped)
    with pytest.raises(CorruptIndexError, match=r"has norm"):
        IndexRegistry(encoder, use_gpu=False, canary_units=0).publish("tiny", flipped)
    with pytest.raises(Exception, match=r"canary units .* must be an integer >= 0"):
        ServiceConfig(canary_units=-1)

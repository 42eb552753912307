"""Index directories: manifest, atomic builds, bad input, corrupt and incompatible artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retriever.errors import CorpusError, CorruptIndexError, IncompatibleIndexError, NotFoundError
from retriever.index import BuildConfig, Index, Manifest, build_index
from retriever.index.store import UNITS_NAME
from retriever.linearize import LINEARIZER_VERSION
from retriever.records import Source
from retriever.searcher import Query, Searcher


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_manifest_describes_the_build(tiny_index_dir: Path, tiny_records: list[dict], encoder) -> None:
    manifest = Manifest.read(tiny_index_dir)
    assert manifest.model_checksum == encoder.checksum
    assert manifest.prompts == encoder.prompts
    assert manifest.linearizer_version == LINEARIZER_VERSION
    assert manifest.dimension == 384
    assert manifest.metric == "inner_product"
    assert manifest.factory == "auto"
    assert {s.factory for s in manifest.shards} == {"Flat"}
    assert len(manifest.corpus_fingerprint) == 64
    assert set(manifest.counts) == {s.value for s in Source}
    records = {s.value: sum(1 for r in tiny_records if r["source"] == s.value) for s in Source}
    assert manifest.records == records
    rows = sum(sum(1 for row in r["rows"] if any(c.strip() for c in row)) for r in tiny_records if r["source"] == "table")
    assert manifest.counts["table"] == rows
    assert manifest.counts["kb"] == records["kb"]
    names = {f.name for f in manifest.files}
    assert names == {"units.arrow"} | {f"{s.value}.faiss" for s in Source}
    assert sorted(p.name for p in tiny_index_dir.iterdir()) == sorted(names | {"manifest.json"})


def test_units_are_ordered_by_source_in_contiguous_shards(tiny_index) -> None:
    start = 0
    for shard in tiny_index.manifest.shards:
        assert shard.start == start
        assert {tiny_index.store.source_of(i).value for i in range(start, start + shard.count)} == {shard.source}
        start += shard.count
    assert start == len(tiny_index.store)


def test_filtered_search_equals_brute_force_on_real_embeddings(tiny_index, encoder) -> None:
    searcher = Searcher(tiny_index, encoder)
    vectors = np.vstack([shard.cpu_index.reconstruct_n(0, shard.count) for shard in tiny_index.shards.shards.values()])
    questions = ["who was born in 1980?", "which film came out in 1997?", "what genre is the album?"]
    for sources in [(), (Source.TABLE,), (Source.KB, Source.INFOBOX), (Source.TEXT,)]:
        queries = [Query(q, sources=sources, k=5) for q in questions]
        results = searcher.search(queries)
        embedded = searcher.encode([searcher.plan(q) for q in queries])
        allowed = [i for i in range(len(tiny_index.store)) if not sources or tiny_index.store.source_of(i) in sources]
        for result, qvec in zip(results, embedded):
            sims = vectors[allowed] @ qvec
            want = [allowed[j] for j in sorted(range(len(allowed)), key=lambda j: (-sims[j], allowed[j]))[:5]]
            assert [h.unit_id for h in result.hits] == want
            assert all(not sources or h.source in sources for h in result.hits)


BAD_INPUTS = {
    "malformed_json": '{"id": "a", "source": "text", "text": "x"}\n{"id": \n',
    "unknown_source": '{"id": "a", "source": "video", "text": "x"}\n',
    "missing_field": '{"id": "a", "source": "kb", "subject": "s", "object": "o"}\n',
    "wrong_type": '{"id": "a", "source": "infobox", "title": "T", "attributes": {"k": "v"}}\n',
    "duplicate_id": '{"id": "a", "source": "text", "text": "x"}\n{"id": "a", "source": "text", "text": "y"}\n',
    "empty": "",
    "no_units": '{"id": "t", "source": "table", "title": "T", "header": ["a"], "rows": [["", " "]]}\n',
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_corpus_fails_clearly_and_writes_nothing(tmp_path: Path, encoder, case: str) -> None:
    corpus = tmp_path / "in" / f"{case}.jsonl"
    corpus.parent.mkdir()
    corpus.write_text(BAD_INPUTS[case])
    out_parent = tmp_path / "builds"
    out_parent.mkdir()
    with pytest.raises(CorpusError, match=rf"{case}\.jsonl"):
        build_index(BuildConfig(corpus=corpus, out=out_parent / "idx"), encoder)
    assert leftovers(out_parent) == []


def test_50mb_line_fails_clearly_and_writes_nothing(tmp_path: Path, encoder) -> None:
    corpus = tmp_path / "huge.jsonl"
    corpus.write_text('{"id": "x", "source": "text", "text": "' + "word " * (10 * 1024 * 1024) + '"}\n')
    with pytest.raises(CorpusError, match=r"huge\.jsonl:1: line is longer than"):
        build_index(BuildConfig(corpus=corpus, out=tmp_path / "builds" / "idx"), encoder)
    assert not (tmp_path / "builds").exists() or leftovers(tmp_path / "builds") == []


def test_failure_during_encoding_leaves_nothing(tmp_path: Path, tiny_corpus: Path, encoder, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("encoder died")

    monkeypatch.setattr(encoder, "encode_documents", boom)
    with pytest.raises(RuntimeError, match="encoder died"):
        build_index(BuildConfig(corpus=tiny_corpus, out=tmp_path / "idx"), encoder)
    assert leftovers(tmp_path) == []


def test_failure_while_writing_leaves_nothing_and_keeps_the_old_build(tmp_path: Path, tiny_index_dir: Path,
                                                                      tiny_corpus: Path, encoder, monkeypatch) -> None:
    out = tmp_path / "idx"
    shutil.copytree(tiny_index_dir, out)
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(encoder, "encode_documents", lambda texts, **kw: np.zeros((len(texts), 384), np.float32))
    import retriever.index.build as build_module

    def broken_shard(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(build_module, "write_shard", broken_shard)
    with pytest.raises(OSError, match="disk full"):
        build_index(BuildConfig(corpus=tiny_corpus, out=out, overwrite=True), encoder)
    assert leftovers(tmp_path) == [".idx.build", "idx"]  # the encoded parts, kept for --resume
    assert (out / "manifest.json").read_bytes() == before
    Index.load(out)


def test_existing_output_needs_overwrite(tmp_path: Path, tiny_corpus: Path, encoder) -> None:
    (tmp_path / "idx").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_index(BuildConfig(corpus=tiny_corpus, out=tmp_path / "idx"), encoder)


def copy_index(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "append", "flip_header", "flip_vector", "delete", "units_edit"])
def test_corrupt_files_are_refused(tmp_path: Path, tiny_index_dir: Path, damage: str) -> None:
    path = copy_index(tiny_index_dir, tmp_path)
    faiss_file = path / "table.faiss"
    if damage == "truncate":
        faiss_file.write_bytes(faiss_file.read_bytes()[:-100])
    elif damage == "append":
        faiss_file.write_bytes(faiss_file.read_bytes() + b"\0" * 8)
    elif damage == "flip_header":
        flip_byte(faiss_file, 10)
    elif damage == "flip_vector":
        flip_byte(faiss_file, faiss_file.stat().st_size - 50)
    elif damage == "delete":
        faiss_file.unlink()
    else:
        units = path / UNITS_NAME
        flip_byte(units, units.stat().st_size // 2)
    with pytest.raises(CorruptIndexError):
        Index.load(path)


def test_manifest_that_lies_about_the_shape_is_refused(tmp_path: Path, tiny_index_dir: Path) -> None:
    path = copy_index(tiny_index_dir, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["dimension"] = 768
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="dimension 384, manifest says .* dimension 768"):
        Index.load(path)


def test_missing_or_unfinished_directories(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Index.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(CorruptIndexError, match="no manifest.json"):
        Index.load(tmp_path / "half")


def test_format_1_indexes_with_a_jsonl_unit_store_are_refused(tmp_path: Path, tiny_index_dir: Path) -> None:
    path = copy_index(tiny_index_dir, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    manifest["format_version"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="expected format_version 2.*rebuild the index"):
        Index.load(path)


@pytest.mark.parametrize("field", ["model_checksum", "prompts"])
def test_other_model_or_prompts_are_refused(tmp_path: Path, tiny_index_dir: Path, encoder, field: str) -> None:
    path = copy_index(tiny_index_dir, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    if field == "model_checksum":
        manifest[field] = "0" * 64
    else:
        manifest[field]["query_table"] = "Find tables:"
    (path / "manifest.json").write_text(json.dumps(manifest))
    index = Index.load(path)
    with pytest.raises(IncompatibleIndexError, match="rebuild the index"):
        Searcher(index, encoder)


def test_passages_carry_the_rows_that_link_to_them_and_the_manifest_says_how_many(tmp_path: Path, encoder) -> None:
    records = [
        {"id": "t", "source": "table", "title": "League", "header": ["Pos", "Club"], "rows": [["3", "Blues"]],
         "row_links": [["p"]]},
        {"id": "p", "source": "text", "title": "Blues FC", "text": "Blues FC is a football club."},
        {"id": "q", "source": "text", "title": "Reds FC", "text": "Reds FC is another club."},
    ]
    corpus = tmp_path / "linked.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    texts = {}
    for rows in (2, 0):
        out = tmp_path / f"links{rows}"
        build_index(BuildConfig(corpus=corpus, out=out, link_rows=rows), encoder)
        index = Index.load(out, use_gpu=False)
        assert index.manifest.link_rows == rows
        texts[rows] = {index.store.record_id(i): index.store.text(i) for i in range(len(index.store))}
    assert texts[2]["p"] == "Blues FC: Listed in: League: Pos is 3, Club is Blues. Blues FC is a football club."
    assert texts[0]["p"] == "Blues FC: Blues FC is a football club."
    assert texts[2]["q"] == texts[0]["q"] == "Reds FC: Reds FC is another club."
    assert texts[2]["t"] == texts[0]["t"]

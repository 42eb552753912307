"""The build pipeline: resumable parts, kill -9 and --resume, and the Ray engine against the local one."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from retriever.errors import CorpusError, InvalidInputError
from retriever.index import BuildConfig, Index, Manifest, build_index
from retriever.index.build import Engine
from retriever.index.work import JOURNAL_NAME, work_dir_for
from retriever.linearize import linearize_records
from retriever.records import Source
from retriever.searcher import Query, Searcher
from tests.conftest import write_jsonl


def index_files(path: Path) -> dict[str, bytes]:
    """Every file of an index directory except the manifest's run-dependent fields."""
    files = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "manifest.json"}
    manifest = orjson.loads((path / "manifest.json").read_bytes())
    for key in ("created", "build_seconds", "build"):
        manifest.pop(key)
    files["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
    return files


def all_vectors(index: Index) -> np.ndarray:
    return np.vstack([s.cpu_index.reconstruct_n(0, s.count) for s in index.shards.shards.values()])


def same_index(a: Path, b: Path, atol: float = 0.0) -> None:
    """Same units in the same order, vectors equal within ``atol``, same manifest shape."""
    ia, ib = Index.load(a, use_gpu=False), Index.load(b, use_gpu=False)
    assert len(ia.store) == len(ib.store)
    assert list(ia.store.record_ids) == list(ib.store.record_ids)
    assert list(ia.store.texts) == list(ib.store.texts)
    assert np.array_equal(ia.store.parts, ib.store.parts)
    assert np.array_equal(ia.store.sources, ib.store.sources)
    assert np.abs(all_vectors(ia) - all_vectors(ib)).max() <= atol
    assert ia.manifest.counts == ib.manifest.counts
    assert [(s.source, s.start, s.count, s.factory) for s in ia.manifest.shards] == \
        [(s.source, s.start, s.count, s.factory) for s in ib.manifest.shards]


def dies_on_call(encode, n: int):
    """``encode`` that raises on its n-th call (an encoder lost mid-build)."""
    calls = {"n": 0}

    def wrapped(texts, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("worker lost")
        return encode(texts, **kwargs)

    return wrapped


def test_build_records_parts_and_cleans_its_work(tmp_path: Path, tiny_corpus: Path, encoder) -> None:
    out = tmp_path / "idx"
    report = build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=32), encoder)
    manifest = Manifest.read(out)
    assert report.parts_encoded == manifest.build["parts"] > 4
    assert manifest.build["engine"] == "local"
    assert all(s.factory == "Flat" and s.recall_at_10 is None and s.reason for s in manifest.shards)
    assert not work_dir_for(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_resume_reuses_journalled_parts_and_equals_a_fresh_build(tmp_path: Path, tiny_corpus: Path, encoder,
                                                                  tiny_index_dir: Path, monkeypatch) -> None:
    out = tmp_path / "idx"
    real = encoder.encode_documents
    monkeypatch.setattr(encoder, "encode_documents", dies_on_call(real, 5))
    config = BuildConfig(corpus=tiny_corpus, out=out, part_size=16)
    with pytest.raises(RuntimeError, match="worker lost"):
        build_index(config, encoder)
    assert not out.exists()
    journal = (work_dir_for(out) / JOURNAL_NAME).read_bytes().splitlines()
    assert len(journal) == 4
    with pytest.raises(InvalidInputError, match="--resume"):
        build_index(config, encoder)  # never throws encoded parts away silently
    monkeypatch.setattr(encoder, "encode_documents", real)
    counted = {"n": 0}

    def counting(texts, **kwargs):
        counted["n"] += 1
        return real(texts, **kwargs)

    monkeypatch.setattr(encoder, "encode_documents", counting)
    report = build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16, resume=True), encoder)
    assert report.parts_reused == 4 and counted["n"] == report.parts_encoded
    fresh = tmp_path / "fresh"
    build_index(BuildConfig(corpus=tiny_corpus, out=fresh, part_size=16), encoder)
    assert index_files(out) == index_files(fresh)
    same_index(out, tiny_index_dir, atol=1e-5)  # part size does not change the result


def test_planning_interrupted_after_a_checkpoint_resumes_there_and_equals_a_fresh_build(
        tmp_path: Path, tiny_corpus: Path, tiny_records: list[dict], encoder, monkeypatch, caplog) -> None:
    from retriever.index import build as build_module

    monkeypatch.setattr(build_module, "_PLAN_CHECKPOINT_RECORDS", 3)
    real = build_module._SourceSpill.planned_record

    def dies_at_record_8(self, source: str) -> None:
        if self.planned == 7:
            raise KeyboardInterrupt  # Ctrl-C, or the end of a session, while planning
        real(self, source)

    out = tmp_path / "idx"
    monkeypatch.setattr(build_module._SourceSpill, "planned_record", dies_at_record_8)
    with pytest.raises(KeyboardInterrupt):
        build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16), encoder)
    work = work_dir_for(out)
    progress = orjson.loads((work / "plan-progress.json").read_bytes())
    assert progress["planned"] == 6 and sum(progress["records"].values()) == 6
    monkeypatch.setattr(build_module._SourceSpill, "planned_record", real)
    planned: list[str] = []

    def recording(records, budget):
        for record, units in linearize_records(records, budget):
            planned.append(record.id)
            yield record, units

    monkeypatch.setattr(build_module, "linearize_records", recording)
    caplog.set_level("INFO", logger="retriever.index.build")
    build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16, resume=True), encoder)
    assert "resuming planning after 6 records" in caplog.text
    assert planned == [r["id"] for r in tiny_records[6:]]  # the first 6 records were not linearized again
    assert not work.exists()
    fresh = tmp_path / "fresh"
    build_index(BuildConfig(corpus=tiny_corpus, out=fresh, part_size=16), encoder)
    assert index_files(out) == index_files(fresh)


def test_an_interrupted_planning_is_discarded_without_resume_and_by_other_inputs(
        tmp_path: Path, tiny_corpus: Path, encoder, monkeypatch, caplog) -> None:
    from retriever.index import build as build_module

    monkeypatch.setattr(build_module, "_PLAN_CHECKPOINT_RECORDS", 3)
    real = build_module._SourceSpill.planned_record

    def dies(self, source: str) -> None:
        if self.planned == 7:
            raise KeyboardInterrupt
        real(self, source)

    out = tmp_path / "idx"
    monkeypatch.setattr(build_module._SourceSpill, "planned_record", dies)
    with pytest.raises(KeyboardInterrupt):
        build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16), encoder)
    monkeypatch.setattr(build_module._SourceSpill, "planned_record", real)
    caplog.set_level("INFO", logger="retriever.index.build")
    with pytest.raises(KeyboardInterrupt):  # again, now with another part size: other inputs, planned afresh
        monkeypatch.setattr(build_module._SourceSpill, "planned_record", dies)
        build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=8, resume=True), encoder)
    assert "resuming planning" not in caplog.text
    monkeypatch.setattr(build_module._SourceSpill, "planned_record", real)
    build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=8), encoder)  # no --resume: discarded, warned
    assert "discarding an interrupted planning" in caplog.text and "resuming planning" not in caplog.text
    fresh = tmp_path / "fresh"
    build_index(BuildConfig(corpus=tiny_corpus, out=fresh, part_size=8), encoder)
    assert index_files(out) == index_files(fresh)


def test_resume_refuses_other_inputs_and_a_corrupt_part_is_encoded_again(tmp_path: Path, tiny_corpus: Path,
                                                                         tiny_records: list[dict], encoder,
                                                                         monkeypatch) -> None:
    out = tmp_path / "idx"
    real = encoder.encode_documents
    monkeypatch.setattr(encoder, "encode_documents", dies_on_call(real, 3))
    with pytest.raises(RuntimeError):
        build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16), encoder)
    monkeypatch.setattr(encoder, "encode_documents", real)
    other = write_jsonl(tmp_path / "other.jsonl", tiny_records[:-1])
    with pytest.raises(InvalidInputError, match="corpus_fingerprint"):
        build_index(BuildConfig(corpus=other, out=out, part_size=16, resume=True), encoder)
    part = next((work_dir_for(out) / "parts").glob("part-*.npy"))
    data = bytearray(part.read_bytes())
    data[-3] ^= 0x40
    part.write_bytes(bytes(data))
    report = build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16, resume=True), encoder)
    assert report.parts_reused == 1
    fresh = tmp_path / "fresh"
    build_index(BuildConfig(corpus=tiny_corpus, out=fresh, part_size=16), encoder)
    assert index_files(out) == index_files(fresh)


def test_bad_input_fails_before_the_model_loads(tmp_path: Path, monkeypatch) -> None:
    from retriever.encoder import Encoder, EncoderConfig

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Encoder, "_load", no_model)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "source": "text", "text": "x"}\n{"id": "b", "source": "kb"}\n')
    started = time.perf_counter()
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2"):
        build_index(BuildConfig(corpus=bad, out=tmp_path / "idx"), EncoderConfig(show_progress=False))
    with pytest.raises(CorpusError, match="file not found"):
        build_index(BuildConfig(corpus=tmp_path / "nofile.jsonl", out=tmp_path / "idx"), EncoderConfig())
    assert time.perf_counter() - started < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


CLI = [sys.executable, "-m", "retriever", "-q", "build-index"]


def journal_lines(out: Path) -> int:
    path = work_dir_for(out) / JOURNAL_NAME
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_driver_killed_at_random_points_then_resumed_equals_an_uninterrupted_build(tmp_path: Path,
                                                                                   tiny_corpus: Path) -> None:
    """kill -9 of the build driver K >= 10 times, then --resume: the index equals an uninterrupted build.

    Odd attempts die at a random instant of the whole run (start-up, planning, encoding, publishing);
    even ones right after a random number of further parts were journalled (mid-encoding).
    """
    rng = random.Random(7)
    base = [*CLI, str(tiny_corpus), "--part-size", "4", "--no-progress"]
    reference = tmp_path / "reference"
    started = time.perf_counter()
    subprocess.run([*base, "--out", str(reference)], check=True, capture_output=True)
    full = time.perf_counter() - started
    out = tmp_path / "idx"
    kills = finished = 0
    while kills < 10:
        log = tmp_path / "last.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen([*base, "--out", str(out), "--resume"], stdout=fh, stderr=fh)
        if kills % 2:
            time.sleep(rng.uniform(0.0, full))
        else:
            target = journal_lines(out) + rng.randint(1, 4)
            while proc.poll() is None and journal_lines(out) < target:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            assert not out.exists() or Index.load(out, use_gpu=False)  # never a partial index
        else:  # this run got to the end first: it must equal the reference; start another cycle
            assert proc.returncode == 0, log.read_text()
            assert index_files(out) == index_files(reference)
            shutil.rmtree(out)
            finished += 1
    subprocess.run([*base, "--out", str(out), "--resume"], check=True, capture_output=True)
    assert index_files(out) == index_files(reference)
    assert not work_dir_for(out).exists()
    assert finished < kills


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_build_equals_the_local_build_on_the_sample_corpus(ray_local, tmp_path: Path, encoder) -> None:
    from retriever.sample import SAMPLE_CORPUS, data_file

    corpus = data_file(SAMPLE_CORPUS)
    local, distributed = tmp_path / "local", tmp_path / "ray"
    build_index(BuildConfig(corpus=corpus, out=local, part_size=128), encoder)
    report = build_index(BuildConfig(corpus=corpus, out=distributed, part_size=128, engine=Engine.RAY, workers=2),
                         encoder.config)
    assert Manifest.read(distributed).build["engine"] == "ray"
    # the sample's linked passages carry their rows in both engines (same_index compares the texts)
    store = Index.load(distributed, use_gpu=False).store
    assert sum("Listed in: " in store.text(i) for i in range(len(store))) >= 10
    assert report.parts_encoded == Manifest.read(local).build["parts"]
    same_index(local, distributed, atol=1e-5)
    questions = ["who founded the club?", "what genre is the album?", "when was he born?", "which team won?"]
    a = Searcher(Index.load(local, use_gpu=False), encoder)
    b = Searcher(Index.load(distributed, use_gpu=False), encoder)
    for sources in [(), (Source.TABLE,), (Source.KB, Source.INFOBOX)]:
        queries = [Query(q, sources=sources) for q in questions]
        for ra, rb in zip(a.search(queries), b.search(queries)):
            assert [h.unit_id for h in ra.hits] == [h.unit_id for h in rb.hits]


def encoder_actor_pids() -> list[int]:
    """Processes of Ray encoder actors (Ray titles them ``ray::MapWorker(MapBatches(_EncodeParts))``)."""
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in listing.splitlines() if "_EncodeParts" in line
            and "ps -eo" not in line]


def test_a_ray_encoder_killed_mid_build_loses_no_part(ray_local, tmp_path: Path, tiny_corpus: Path,
                                                      encoder) -> None:
    """kill -9 of an encoder actor while it encodes: Ray Data restarts it and retries its part; if it
    gave up, --resume finishes from the journal. Either way the index equals an uninterrupted build."""
    import threading

    local, distributed = tmp_path / "local", tmp_path / "ray"
    build_index(BuildConfig(corpus=tiny_corpus, out=local, part_size=8), encoder)
    config = BuildConfig(corpus=tiny_corpus, out=distributed, part_size=8, engine=Engine.RAY, workers=1)
    killed: list[int] = []

    def kill_once_parts_are_flowing() -> None:
        journal = work_dir_for(distributed) / JOURNAL_NAME
        end = time.monotonic() + 900  # Ray and the actor's model start slowly on a busy 2-core machine
        while time.monotonic() < end:
            pids = encoder_actor_pids()
            if pids and journal.is_file() and journal.read_bytes().count(b"\n") >= 1:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_parts_are_flowing, daemon=True)
    killer.start()
    try:
        report = build_index(config, encoder.config)
    except Exception:  # Ray gave up on the part: the journal has what was done
        report = build_index(replace(config, resume=True), encoder.config)
        assert report.parts_reused >= 1
    killer.join(10)
    assert killed, "the encoder actor was never seen, so nothing was killed"
    assert not any(p == killed[0] for p in encoder_actor_pids())
    same_index(local, distributed, atol=1e-5)


def test_ray_build_reports_bad_input_at_its_line(ray_local, tmp_path: Path, tiny_records: list[dict]) -> None:
    from retriever.encoder import EncoderConfig

    lines = [orjson.dumps(r).decode() for r in tiny_records]
    lines.insert(70, '{"id": "x", "source": "infobox", "title": "T", "attributes": {"k": "v"}}')
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:71: field 'attributes'"):
        build_index(BuildConfig(corpus=corpus, out=tmp_path / "idx", engine=Engine.RAY),
                    EncoderConfig(show_progress=False))
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join([*lines[:69], lines[3]]) + "\n")
    with pytest.raises(CorpusError, match=r"dup\.jsonl:70: field 'id': duplicate id .* line 4"):
        build_index(BuildConfig(corpus=dup, out=tmp_path / "idx", engine=Engine.RAY),
                    EncoderConfig(show_progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "dup.jsonl"]


def test_kept_parts_index_again_with_another_factory_without_encoding(tmp_path: Path, tiny_corpus: Path, encoder,
                                                                      monkeypatch) -> None:
    out = tmp_path / "idx"
    build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16, keep_parts=True), encoder)
    assert (work_dir_for(out) / "plan.json").is_file()

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(encoder, "encode_documents", no_encoding)
    gate_calls: list[list[str]] = []
    encode_queries = encoder.encode_queries

    def spy(texts, instructions=None, show_progress=False):
        gate_calls.append(list(texts))
        return encode_queries(texts, instructions, show_progress)

    monkeypatch.setattr(encoder, "encode_queries", spy)
    # --resume on a published build of the same inputs: nothing to do, parts still kept.
    assert build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16, resume=True, keep_parts=True),
                       encoder).parts_encoded == 0
    report = build_index(BuildConfig(corpus=tiny_corpus, out=out, part_size=16, resume=True, overwrite=True,
                                     factory="IVF4,Flat", min_recall=0.5), encoder)
    assert report.parts_encoded == 0 and report.parts_reused > 0
    manifest = Manifest.read(out)
    ivf = [s for s in manifest.shards if s.factory == "IVF4,Flat"]
    assert ivf and all(s.recall_at_10 is not None and s.recall_at_10 >= 0.5 and s.search["nprobe"] >= 1 for s in ivf)
    assert all(s.reason == "given (--factory)" for s in manifest.shards)
    # the recall gate encoded its pseudo-queries once, for every approximate shard, as queries
    assert len(gate_calls) == 1 and 0 < len(gate_calls[0]) <= manifest.total_units
    assert all(0 < len(t.split()) <= 24 for t in gate_calls[0])
    assert "pseudo-queries" in manifest.build["recall_queries"]
    assert not work_dir_for(out).exists()
    index = Index.load(out, use_gpu=False)
    assert len(index.store) == manifest.total_units


def test_recall_gate_refuses_to_publish_and_keeps_the_parts(tmp_path: Path, tiny_corpus: Path, encoder) -> None:
    from retriever.index.shard_builder import RecallTooLowError

    out = tmp_path / "idx"
    with pytest.raises(RecallTooLowError, match=r"recall@10 0\.\d+ .* below --min-recall 1\.0"):
        build_index(BuildConfig(corpus=tiny_corpus, out=out, factory="IVF4,PQ4x4fs", min_recall=1.0), encoder)
    assert not out.exists() and (work_dir_for(out) / "plan.json").is_file()

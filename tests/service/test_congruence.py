"""Congruence: 200 seeded queries get the same hits from every path into the search engine.

The paths: in-process ``Searcher.search`` (the expectation), the gRPC server (client → servicer →
batcher → searcher, with four concurrent callers so queries of different instructions, filters,
k and thresholds share batches), the CLI (``retriever search --json``) and the benchmark harness
(``EngineRetriever`` → ``Searcher.rank``), in each mode: dense, and BM25 and hybrid over the
index's lexical part. Half of the queries carry a source filter and a third a score threshold.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from retriever.cli.main import main
from retriever.client import RetrieverClient
from retriever.evaluation.retrievers import EngineRetriever
from retriever.instructions import general_instruction, source_instruction
from retriever.query import FusionConfig, Mode, Query, SearchResult
from retriever.records import Source
from retriever.searcher import Searcher, build_lexical, load_lexical
from retriever.service.proto import retriever_pb2 as pb
from retriever.service.server import RetrieverServer
from tests.service.helpers import copy_index, running_server

QUERIES = 200
INSTRUCTIONS = [None, None, "", general_instruction(), source_instruction(Source.TABLE),
                source_instruction(Source.KB), "retrieve evidence from tables and infoboxes",
                "find supporting passages", "answer the question"]
SOURCE_CHOICES = [(), (), (), (), (Source.TEXT,), (Source.TABLE,), (Source.KB,), (Source.INFOBOX,),
                  (Source.KB, Source.INFOBOX), (Source.TEXT, Source.TABLE, Source.KB)]
#: Score floors per mode (cosine, BM25, fused RRF), chosen to cut inside typical rankings.
THRESHOLDS = {Mode.DENSE: (0.1, 0.2, 0.3), Mode.BM25: (1.0, 3.0, 6.0), Mode.HYBRID: (0.02, 0.026, 0.03)}
FUSION = FusionConfig(rrf_k=60.0, depth=40)


def seeded_queries(records: list[dict], mode: Mode, n: int = QUERIES, seed: int = 1234) -> list[Query]:
    rng = random.Random(seed)
    vocabulary = []
    for record in records:
        text = record.get("text") or record.get("title") or record.get("subject") or ""
        vocabulary.extend(w for w in text.split() if w.isalpha())
    out = []
    for _ in range(n):
        text = " ".join(rng.sample(vocabulary, rng.randint(1, 8)))
        threshold = rng.choice(THRESHOLDS[mode]) if rng.random() < 1 / 3 else None
        out.append(Query(text, rng.choice(INSTRUCTIONS), rng.choice(SOURCE_CHOICES), rng.randint(1, 20), threshold,
                         mode, FUSION))
    return out


def assert_same_hits(query: Query, want: SearchResult, have: Sequence[tuple], scores: Sequence[float],
                     abs_tol: float = 1e-6) -> None:
    """``have``: (record_id, part, source, title, text) per hit."""
    assert list(have) == [(h.record_id, h.part, h.source, h.title, h.text) for h in want.hits], query
    assert list(scores) == pytest.approx([h.score for h in want.hits], abs=abs_tol), query
    assert len(have) <= query.k


@pytest.fixture(scope="module")
def lexical_dir(tiny_index, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lexical(tiny_index, tmp_path_factory.mktemp("congruence") / "lexical")


@pytest.fixture(scope="module")
def modes_server(encoder, tiny_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetrieverServer]:
    """A server over a copy of the tiny index that has its lexical part (``<index>/lexical``), loaded by publish."""
    from retriever.index import Index

    copy = copy_index(tiny_index_dir, tmp_path_factory.mktemp("modes") / "tiny")
    build_lexical(Index.load(copy, use_gpu=False))
    with running_server(encoder, [("tiny", copy)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def searcher(tiny_index, encoder, lexical_dir: Path) -> Searcher:
    return Searcher(tiny_index, encoder, lexical=load_lexical(tiny_index, lexical_dir))


@pytest.fixture(scope="module")
def expected(searcher: Searcher, tiny_records: list[dict]) -> dict[Mode, tuple[list[Query], list[SearchResult]]]:
    out = {}
    for mode in Mode:
        queries = seeded_queries(tiny_records, mode)
        out[mode] = (queries, [searcher.search([q])[0] for q in queries])
    dense = out[Mode.DENSE]
    # The seeds exercise what they should: filters, resolved filters, thresholds that cut, k above the hits left.
    # (dense and hybrid read instructions with the bundled model's router, bm25 with the rules)
    resolved = sum(r.resolved for _, results in out.values() for r in results)
    assert sum(bool(q.sources) for q in dense[0]) >= 60 and resolved >= 10
    assert sum(q.score_threshold is not None and len(r.hits) < q.k for q, r in zip(*dense, strict=True)) >= 20
    return out


@pytest.mark.parametrize("mode", list(Mode))
def test_grpc_hits_equal_in_process_hits(request: pytest.FixtureRequest, expected, mode: Mode) -> None:
    # Dense over the plain server (published as in production); bm25 and hybrid need the lexical part.
    server = request.getfixturevalue("server" if mode is Mode.DENSE else "modes_server")
    queries, results = expected[mode]
    with RetrieverClient(f"127.0.0.1:{server.port}", timeout=60) as client, ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: client.retrieve(q.text, instruction=q.instruction, sources=q.sources,
                                                       top_k=q.k, score_threshold=q.score_threshold,
                                                       with_text=True, mode=q.mode, fusion=q.fusion), queries))
    assert server.batcher.stats.largest_batch > 1
    for query, want, have in zip(queries, results, got, strict=True):
        assert_same_hits(query, want, [(h.record_id, h.part, h.source, h.title, h.text) for h in have.hits],
                         [h.score for h in have.hits])
        assert [h.unit_id for h in have.hits] == [h.unit_id for h in want.hits]
        assert have.sources == want.sources and have.resolved == want.resolved
        assert have.instruction == want.instruction and have.mode is mode


def test_index_info_lists_the_modes_an_index_answers(server, modes_server) -> None:
    with RetrieverClient(f"127.0.0.1:{server.port}") as plain, RetrieverClient(f"127.0.0.1:{modes_server.port}") as full:
        assert list(plain.index_info().indexes[0].modes) == [pb.SEARCH_MODE_DENSE]
        assert list(full.index_info().indexes[0].modes) == [pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_BM25,
                                                            pb.SEARCH_MODE_HYBRID]


@pytest.mark.parametrize("mode", list(Mode))
def test_harness_rankings_equal_in_process_hits(searcher: Searcher, expected, mode: Mode) -> None:
    queries, results = expected[mode]
    by_k: dict[int, list[int]] = {}
    for i, query in enumerate(queries):
        by_k.setdefault(query.k, []).append(i)
    retriever = EngineRetriever(searcher, mode, FUSION)
    for k, rows in by_k.items():  # the harness ranks many queries at one depth
        rankings = retriever.rank([queries[i] for i in rows], k)
        for i, (ids, scores) in zip(rows, rankings, strict=True):
            assert ids.tolist() == [h.unit_id for h in results[i].hits], queries[i]
            assert scores.tolist() == pytest.approx([h.score for h in results[i].hits], abs=1e-6)


def cli_args(query: Query, index_dir: Path, lexical_dir: Path) -> list[str]:
    args = ["-q", "search", str(index_dir), query.text, "--json", "--no-progress", "-k", str(query.k),
            "--mode", query.mode.value, "--lexical", str(lexical_dir), "--rrf-k", str(query.fusion.rrf_k),
            "--fusion-depth", str(query.fusion.depth)]
    if query.instruction is not None:
        args += ["--instruction", query.instruction]
    for source in query.sources:
        args += ["--source", source.value]
    if query.score_threshold is not None:
        args += ["--score-threshold", repr(query.score_threshold)]
    return args


@pytest.mark.parametrize("mode", list(Mode))
def test_cli_hits_equal_in_process_hits(tiny_index_dir: Path, lexical_dir: Path, encoder, expected, mode: Mode,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("retriever.cli.index_commands.Encoder", lambda config: encoder)  # load the model once
    queries, results = expected[mode]
    for query, want in zip(queries, results, strict=True):
        assert main(cli_args(query, tiny_index_dir, lexical_dir)) == 0
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert_same_hits(query, want, [(h["record_id"], h["part"], Source(h["source"]), h["title"], h["text"])
                                       for h in hits], [h["score"] for h in hits], abs_tol=2e-6)


def test_threshold_and_filter_leave_the_ranking_otherwise_unchanged(searcher: Searcher, expected) -> None:
    for mode in Mode:
        for query, want in zip(*expected[mode], strict=True):
            if query.score_threshold is None:
                continue
            every = searcher.search([replace(query, score_threshold=None)])[0].hits
            assert want.hits == [h for h in every if h.score >= query.score_threshold], query
            if want.sources:
                assert {h.source for h in want.hits} <= set(want.sources)


def grouped(queries: Sequence[Query], seed: int = 99) -> list[Query]:
    """The queries grouped by record, with 1 to 3 units per record and k at most 10."""
    rng = random.Random(seed)
    return [replace(q, k=min(q.k, 10), group_by_record=True, max_per_record=rng.choice((1, 1, 2, 3)))
            for q in queries[:60]]


@pytest.mark.parametrize("mode", list(Mode))
def test_grouped_hits_identical_in_process_over_grpc_and_cli(
        request: pytest.FixtureRequest, searcher: Searcher, expected, mode: Mode, tiny_index_dir: Path,
        lexical_dir: Path, encoder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    server = request.getfixturevalue("server" if mode is Mode.DENSE else "modes_server")
    queries = grouped(expected[mode][0])
    results = [searcher.search([q])[0] for q in queries]
    with RetrieverClient(f"127.0.0.1:{server.port}", timeout=60) as client, ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: client.retrieve(
            q.text, instruction=q.instruction, sources=q.sources, top_k=q.k, score_threshold=q.score_threshold,
            with_text=True, mode=q.mode, fusion=q.fusion, group_by_record=True, max_per_record=q.max_per_record),
            queries))
    crowded = 0
    for query, want, have in zip(queries, results, got, strict=True):
        records = list(dict.fromkeys((h.source, h.record_id) for h in want.hits))
        assert len(records) <= query.k
        counts = [sum((h.source, h.record_id) == r for h in want.hits) for r in records]
        assert max(counts, default=0) <= query.max_per_record
        crowded += max(counts, default=0) > 1
        assert [(h.unit_id, h.record_id, h.part, h.text) for h in have.hits] == \
            [(h.unit_id, h.record_id, h.part, h.text) for h in want.hits], query
        assert [h.score for h in have.hits] == pytest.approx([h.score for h in want.hits], abs=1e-6), query
    assert crowded >= 5  # some records did keep several units

    monkeypatch.setattr("retriever.cli.index_commands.Encoder", lambda config: encoder)
    for query, want in list(zip(queries, results, strict=True))[:15]:
        args = [*cli_args(query, tiny_index_dir, lexical_dir), "--group-by-record",
                "--max-per-record", str(query.max_per_record)]
        assert main(args) == 0
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(h["record_id"], h["part"]) for h in hits] == [(h.record_id, h.part) for h in want.hits], query

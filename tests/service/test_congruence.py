"""Congruence: 200 seeded queries answered over gRPC equal in-process ``Searcher.search`` answers."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from retriever.client import RetrieverClient
from retriever.instructions import general_instruction, source_instruction
from retriever.query import Query
from retriever.records import Source
from retriever.searcher import Searcher

QUERIES = 200
INSTRUCTIONS = [None, None, "", general_instruction(), source_instruction(Source.TABLE),
                source_instruction(Source.KB), "retrieve evidence from tables and infoboxes",
                "find supporting passages", "answer the question"]
SOURCE_CHOICES = [(), (), (Source.TEXT,), (Source.TABLE,), (Source.KB,), (Source.INFOBOX,),
                  (Source.KB, Source.INFOBOX), (Source.TEXT, Source.TABLE, Source.KB)]


def seeded_queries(records: list[dict], n: int = QUERIES, seed: int = 1234) -> list[tuple[Query, int]]:
    rng = random.Random(seed)
    vocabulary = []
    for record in records:
        text = record.get("text") or record.get("title") or record.get("subject") or ""
        vocabulary.extend(w for w in text.split() if w.isalpha())
    out = []
    for _ in range(n):
        text = " ".join(rng.sample(vocabulary, rng.randint(1, 8)))
        out.append((Query(text, rng.choice(INSTRUCTIONS), rng.choice(SOURCE_CHOICES)), rng.randint(1, 20)))
    return out


def test_grpc_hits_equal_in_process_hits(server, tiny_index, encoder, tiny_records):
    queries = seeded_queries(tiny_records)
    searcher = Searcher(tiny_index, encoder)
    expected = [searcher.search([replace(q, k=k)])[0] for q, k in queries]
    with RetrieverClient(f"127.0.0.1:{server.port}", timeout=60) as client, ThreadPoolExecutor(4) as pool:
        # four concurrent callers, so the server batches different instructions, filters and k together
        got = list(pool.map(lambda qk: client.retrieve(qk[0].text, instruction=qk[0].instruction,
                                                        sources=qk[0].sources, top_k=qk[1], with_text=True),
                            queries))
    assert server.batcher.stats.largest_batch > 1
    for (query, k), want, have in zip(queries, expected, got, strict=True):
        assert [h.record_id for h in have.hits] == [h.record_id for h in want.hits], query
        assert [(h.unit_id, h.part, h.source, h.title, h.text) for h in have.hits] == \
            [(h.unit_id, h.part, h.source, h.title, h.text) for h in want.hits]
        assert [h.score for h in have.hits] == pytest.approx([h.score for h in want.hits], abs=1e-6)
        assert have.sources == want.sources and have.resolved == want.resolved
        assert len(have.hits) <= k

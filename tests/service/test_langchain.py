"""The LangChain retriever (retriever.integrations.langchain) against a real server."""

from __future__ import annotations

import asyncio

import grpc
import pytest

pytest.importorskip("langchain_core")

from retriever.client import RemoteError, RetrieverClient
from retriever.integrations.langchain import ServerRetriever
from tests.service.helpers import python_block, run_example


def test_invoke_and_ainvoke_return_the_servers_hits_as_documents(server):
    address = f"127.0.0.1:{server.port}"
    with RetrieverClient(address) as client:
        expected = client.retrieve("spouse of the senator", sources=["infobox"], top_k=3, with_text=True)
    infoboxes = ServerRetriever(address=address, sources=("infobox",), top_k=3)
    try:
        docs = infoboxes.invoke("spouse of the senator")
        assert [d.metadata["unit_id"] for d in docs] == [h.unit_id for h in expected.hits]
        assert [d.page_content for d in docs] == [h.text for h in expected.hits] and all(d.page_content for d in docs)
        first = docs[0].metadata
        assert first["source"] == "infobox" and first["record_id"] == expected.hits[0].record_id
        assert first["score"] == pytest.approx(expected.hits[0].score, abs=1e-6)
        assert first["index"] == "tiny" and first["generation"] == expected.generation
        assert docs[0].id == f"{expected.hits[0].record_id}#{expected.hits[0].part}"
        assert [d.metadata["unit_id"] for d in infoboxes.invoke("spouse of the senator")] == \
            [h.unit_id for h in expected.hits]  # the second call reuses the channel

        async def concurrently() -> list[list[str]]:
            answers = await asyncio.gather(*(infoboxes.ainvoke("spouse of the senator") for _ in range(3)))
            return [[d.metadata["unit_id"] for d in a] for a in answers]

        assert asyncio.run(concurrently()) == [[h.unit_id for h in expected.hits]] * 3
        assert asyncio.run(concurrently()) == [[h.unit_id for h in expected.hits]] * 3  # a new event loop
        with pytest.raises(RemoteError) as refused:
            infoboxes.invoke("   ")
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    finally:
        infoboxes.close()


def test_the_request_fields_reach_the_server(server):
    address = f"127.0.0.1:{server.port}"
    grouped = ServerRetriever(address=address, sources=("table",), top_k=3, group_by_record=True)
    try:
        docs = grouped.invoke("how many goals did he score in the season")
        assert len(docs) == 3 and len({d.metadata["record_id"] for d in docs}) == 3
        assert {d.metadata["source"] for d in docs} == {"table"}
    finally:
        grouped.close()
    with pytest.raises(RemoteError) as missing:
        ServerRetriever(address=address, index="nope").invoke("q")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND


def test_the_example_in_the_service_docs_runs(server, capsys):
    run_example(python_block("docs/SERVICE.md", "ServerRetriever("), server.port)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all("#" in line.split()[1] for line in lines)
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)

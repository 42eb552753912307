"""A LangChain retriever backed by a running retriever server (``pip install 'retriever[langchain]'``).

    from retriever.integrations.langchain import ServerRetriever

    tables = ServerRetriever(address="127.0.0.1:50051", sources=["table"], top_k=5)
    for doc in tables.invoke("who founded the club?"):
        print(doc.metadata["score"], doc.metadata["record_id"], doc.page_content)

``invoke`` calls the server with :class:`~retriever.client.RetrieverClient`, ``ainvoke`` with
:class:`~retriever.client.AsyncRetrieverClient` (no thread per call); each keeps one channel for
the retriever's life (the asyncio one per event loop). Every hit becomes a ``Document`` whose
``page_content`` is the text the server embedded for the unit (a table row or a passage window
with its title), whose ``id`` is ``RECORD_ID#PART`` and whose ``metadata`` holds the unit, its
record, source type, part, title and score, and the index generation that answered. The
retriever's fields are the ``Retrieve`` request's (docs/SERVICE.md): an ``instruction`` conditions
the query encoder, ``sources`` filter exactly, ``mode`` chooses dense, BM25 or hybrid search.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import PrivateAttr

from retriever.client import DEFAULT_ADDRESS, AsyncRetrieverClient, RemoteResult, RetrieverClient

__all__ = ["ServerRetriever", "documents"]


def documents(result: RemoteResult) -> list[Document]:
    """A ``Retrieve`` answer (called ``with_text``) as LangChain documents, best first. A document's
    ``id`` is ``RECORD_ID#PART`` (the record and its row or window), which stays the same across
    rebuilds of the index; ``metadata["unit_id"]`` is the unit's position in the generation that answered."""
    return [Document(page_content=hit.text, id=f"{hit.record_id}#{hit.part}",
                     metadata={"unit_id": hit.unit_id, "record_id": hit.record_id, "source": hit.source.value,
                               "part": hit.part, "title": hit.title, "score": hit.score, "index": result.index,
                               "generation": result.generation})
            for hit in result.hits]


class ServerRetriever(BaseRetriever):
    """LangChain's ``BaseRetriever`` over ``Retrieve`` calls to one server (see the module docs)."""

    address: str = DEFAULT_ADDRESS
    #: Bearer token, when the server requires one.
    token: str | None = None
    #: Free-text instruction for the query encoder (None: the model's saved prompt).
    instruction: str | None = None
    #: Exact source filter: any of text, table, kb, infobox (empty: all, or what the instruction names).
    sources: tuple[str, ...] = ()
    top_k: int = 10
    score_threshold: float | None = None
    #: Served index name ("" = the server's default index).
    index: str = ""
    #: dense, bm25 or hybrid (the last two need an index with a lexical part).
    mode: str = "dense"
    #: Count ``top_k`` in distinct records (a table's rows are one record), ``max_per_record`` hits each.
    group_by_record: bool = False
    max_per_record: int = 1
    #: Deadline per call in seconds.
    timeout: float | None = 30.0
    #: PEM bytes of the CA to connect with TLS (and a client certificate and key for mTLS).
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _client: RetrieverClient | None = PrivateAttr(default=None)
    _async: tuple[asyncio.AbstractEventLoop, AsyncRetrieverClient] | None = PrivateAttr(default=None)

    def _connection(self) -> dict[str, Any]:
        return {"address": self.address, "token": self.token, "timeout": self.timeout,
                "root_certificates": self.root_certificates, "client_certificate": self.client_certificate,
                "client_key": self.client_key}

    def _request(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "sources": self.sources, "top_k": self.top_k,
                "score_threshold": self.score_threshold, "with_text": True, "index": self.index, "mode": self.mode,
                "group_by_record": self.group_by_record, "max_per_record": self.max_per_record}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        with self._lock:
            if self._client is None:
                self._client = RetrieverClient(**self._connection())
            client = self._client
        return documents(client.retrieve(query, **self._request()))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:  # an asyncio channel serves one event loop
            self._async = (loop, AsyncRetrieverClient(**self._connection()))
        return documents(await self._async[1].retrieve(query, **self._request()))

    def close(self) -> None:
        """Close the blocking client's channel (the asyncio one closes with its event loop)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

"""Property test of request validation: every answer is a sane OK or INVALID_ARGUMENT/NOT_FOUND, never INTERNAL.

The suite runs 300 examples (about 20 s); set RETRIEVER_FUZZ_EXAMPLES=2000 for the RELIABILITY.md target.
"""

from __future__ import annotations

import math
import os

import grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from retriever.service.convert import PROTO_TO_SOURCE
from retriever.service.proto import retriever_pb2 as pb

EXAMPLES = int(os.environ.get("RETRIEVER_FUZZ_EXAMPLES", "300"))
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["L", "N", "Zs"]), min_size=3, max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=300),
    st.sampled_from(["", " ", "\t\n", "music of the band", "x" * 4097, "é" * 2049, "\u200b", "🙂" * 1025]),
)
valid_sources = st.lists(st.sampled_from(sorted(PROTO_TO_SOURCE)), unique=True, max_size=4)
valid_top_k = st.integers(min_value=1, max_value=100)
requests = st.builds(
    lambda query, instruction, sources, top_k, threshold, with_text, index: _request(
        query, instruction, sources, top_k, threshold, with_text, index),
    texts,
    st.one_of(st.none(), texts, st.sampled_from(["from tables and infoboxes", "i" * 2049])),
    st.one_of(valid_sources, valid_sources, st.lists(st.integers(min_value=-1, max_value=7), max_size=5)),
    st.one_of(valid_top_k, valid_top_k, st.integers(min_value=-3, max_value=105),
              st.sampled_from([2**31 - 1, -(2**31)])),
    st.one_of(st.none(), st.floats(width=32, allow_nan=True, allow_infinity=True)),
    st.booleans(),
    st.sampled_from(["", "", "tiny", "nope", "../x", "a" * 65]),
)


def _request(query, instruction, sources, top_k, threshold, with_text, index) -> pb.RetrieveRequest:
    request = pb.RetrieveRequest(query=query, sources=sources, top_k=top_k, with_text=with_text, index=index)
    if instruction is not None:
        request.instruction = instruction
    if threshold is not None:
        request.score_threshold = threshold
    return request


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
@given(request=requests)
def test_every_answer_is_ok_and_sane_or_a_client_error(stub, tiny_index, request):
    try:
        response = stub.Retrieve(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert exc.details() and "Traceback" not in exc.details()
        event(exc.code().name)
        return
    event("OK")
    scores = [h.score for h in response.hits]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
    units = [h.unit_id for h in response.hits]
    assert len(set(units)) == len(units) and len(units) <= request.top_k
    store = tiny_index.store
    assert all(store.record_ids[h.unit_id] == h.record_id for h in response.hits)
    if request.sources:
        assert {h.source for h in response.hits} <= set(request.sources)
        assert all(PROTO_TO_SOURCE[h.source] is store.source_of(h.unit_id) for h in response.hits)
    if request.HasField("score_threshold"):
        assert all(s >= request.score_threshold for s in scores)

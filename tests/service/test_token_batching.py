"""Token-budget batching (``--max-batch-tokens``): batches are cut by padded tokens, not only by count."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from retriever.errors import InvalidInputError
from retriever.instructions import instruction_for
from retriever.query import Mode, Query
from retriever.searcher import Searcher, build_lexical, load_lexical
from retriever.service.batching import Batcher, BatchTimings, BoundQuery, padded_tokens
from retriever.service.config import DEFAULT_MAX_BATCH_TOKENS, build_config
from retriever.service.registry import Generation
from tests.service.helpers import (
    GatedEncoder,
    channel_to,
    occupy_worker,
    request,
    running_server,
    stub_for,
    wait_until,
)
from tests.service.test_metrics import scrape
from tests.test_cli import fails_fast, no_model  # noqa: F401  (no_model is a fixture)

LONG = "which members of the band played on the album that was recorded in the city where the singer was born " * 6
SHORTS = [f"who played {w}" for w in ("guitar", "drums", "bass", "piano", "violin", "trumpet")]


@pytest.fixture(scope="module")
def default_instruction(encoder) -> str:
    """The instruction a query without one is encoded with: the model's all-sources one when it is instruction-tuned."""
    return instruction_for(encoder.prompts, ()) if encoder.instruction_tuned else ""


@pytest.fixture(scope="module")
def tokens(encoder, default_instruction) -> dict[str, int]:
    """Each text's tokens as the batcher counts them (with the instruction the server gives a query without one)."""
    texts = [LONG, *SHORTS]
    counted = dict(zip(texts, encoder.query_token_counter()(texts, [default_instruction] * len(texts)), strict=True))
    assert len({counted[s] for s in SHORTS}) == 1, counted  # equal lengths make the expected cuts plain
    assert counted[LONG] > 4 * counted[SHORTS[0]], counted
    return counted


def queue_then_release(server, gated: GatedEncoder, texts: list[str], instruction: str) -> list[list[str]]:
    """Hold the worker, queue one Retrieve per text in this order, release; the encoder calls after the busy one."""
    with channel_to(server) as channel:
        stub = stub_for(channel)
        busy = occupy_worker(stub, gated)
        futures = []
        for i, text in enumerate(texts):  # one by one, so the queue's order is the list's
            futures.append(stub.Retrieve.future(request(text, top_k=3), timeout=60))
            wait_until(lambda n=i + 1: server.batcher.queued == n)
        gated.gate.set()
        assert busy.result().hits
        responses = [f.result() for f in futures]
    assert all(r.hits for r in responses)  # every query answered, the one over the budget included
    assert all(r.instruction == instruction for r in responses)  # encoded as the `tokens` fixture counted them
    return gated.calls[gated.calls.index(["keeps the worker busy"]) + 1:]


def test_a_long_query_is_cut_from_short_ones_by_tokens_and_still_answered(encoder, tiny_index_dir, tokens,
                                                                           default_instruction):
    short = tokens[SHORTS[0]]
    budget = 4 * short  # four short queries fit; the long one alone is over the budget
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)], max_batch_tokens=budget, metrics_port=0) as server:
        calls = queue_then_release(server, gated, [LONG, *SHORTS], default_instruction)
        m = scrape(server.metrics_port)
        batches = server.batcher.stats.batches
    # FIFO: the long query goes alone (over the budget, never refused), then the short ones, four to a batch
    # although --max-batch (32) would take them all
    assert calls == [[LONG], SHORTS[:4], SHORTS[4:]]
    # the batch tokens histogram: one observation per batch (the canary's and the busy call's included)
    assert m["retriever_batch_tokens_count"][()] == batches == 5
    assert m["retriever_batch_tokens_sum"][()] > tokens[LONG] + 6 * short  # + the canary's and the busy call's


def test_without_a_token_budget_only_the_count_cuts(encoder, tiny_index_dir, tokens, default_instruction):
    gated = GatedEncoder(encoder)
    with running_server(gated, [("tiny", tiny_index_dir)], max_batch_tokens=0, max_batch=5) as server:
        calls = queue_then_release(server, gated, [LONG, *SHORTS], default_instruction)
        assert server.batcher.stats.batches == 4  # canary, busy, and the two below
    assert calls == [[LONG, *SHORTS[:4]], SHORTS[4:]]  # today's behaviour: batches of --max-batch queries


# -- the batcher alone: cuts before a long query, BM25 costs nothing ---------------------------------------------


@pytest.fixture(scope="module")
def generation(tiny_index, encoder, tmp_path_factory: pytest.TempPathFactory) -> Generation:
    lexical = load_lexical(tiny_index, build_lexical(tiny_index, tmp_path_factory.mktemp("tokens") / "lexical"))
    return Generation("tiny", 1, Searcher(tiny_index, encoder, lexical=lexical), "now")


def bound(generation: Generation, text: str, mode: Mode = Mode.DENSE) -> BoundQuery:
    return BoundQuery(generation, generation.searcher.plan(Query(text, k=3, mode=mode)))


def test_the_batcher_cuts_before_a_long_query_and_bm25_queries_cost_nothing(encoder, generation, tokens):
    short = tokens[SHORTS[0]]
    gated = GatedEncoder(encoder)
    timings: list[BatchTimings] = []
    batcher = Batcher(gated, max_batch=32, wait_seconds=0.0, on_batch=timings.append, max_batch_tokens=3 * short)
    try:
        gated.gate.clear()
        busy = batcher.submit([bound(generation, "busy")])
        assert gated.entered.wait(10)
        jobs = [[bound(generation, SHORTS[0])], [bound(generation, SHORTS[1])], [bound(generation, LONG)],
                [bound(generation, LONG, Mode.BM25), bound(generation, LONG, Mode.BM25)],  # one job, no vectors
                [bound(generation, s) for s in SHORTS[2:5]]]  # one RetrieveBatch job of three: exactly the budget
        futures = [batcher.submit(job) for job in jobs]
        gated.gate.set()
        assert busy.result(30)[0].hits
        assert all(len(f.result(30)) == len(job) for f, job in zip(futures, jobs, strict=True))
    finally:
        batcher.stop()
    # the two short ones could not take the long one (3 x long > budget): it starts the next batch, and the
    # BM25 job rides with it (it adds no vector), the next three short ones fill a batch of their own
    assert gated.calls[1:] == [SHORTS[:2], [LONG], SHORTS[2:5]]
    assert [(t.queries, t.tokens) for t in timings[1:]] == [
        (2, padded_tokens(2, short)), (3, tokens[LONG]), (3, padded_tokens(3, short))]


def test_the_budget_counts_padded_tokens_not_their_sum(encoder, generation, tokens):
    long, short = tokens[LONG], tokens[SHORTS[0]]
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=32, wait_seconds=0.0, max_batch_tokens=long + 3 * short)
    try:
        gated.gate.clear()
        busy = batcher.submit([bound(generation, "busy")])
        assert gated.entered.wait(10)
        futures = [batcher.submit([bound(generation, text)]) for text in [LONG, *SHORTS[:3]]]
        gated.gate.set()
        assert busy.result(30)[0].hits and all(f.result(30)[0].hits for f in futures)
    finally:
        batcher.stop()
    # their sum is exactly the budget, but the encoder pads the short ones to the long one: 4 x long tokens
    assert gated.calls[1:] == [[LONG], SHORTS[:3]]


# -- the flag and its variable ------------------------------------------------------------------------------------


def test_the_budget_from_flags_and_variables():
    assert build_config({}, {}).max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS == 2048
    assert build_config({}, {"RETRIEVER_MAX_BATCH_TOKENS": "0"}).max_batch_tokens == 0  # off
    assert build_config({"max_batch_tokens": 512}, {"RETRIEVER_MAX_BATCH_TOKENS": "64"}).max_batch_tokens == 512
    assert build_config({}, {"RETRIEVER_MAX_BATCH_TOKENS": " 64 "}).max_batch_tokens == 64
    for bad in (-1, True, 1.5):
        with pytest.raises(InvalidInputError, match="RETRIEVER_MAX_BATCH_TOKENS"):
            build_config({"max_batch_tokens": bad}, {})


@pytest.mark.usefixtures("no_model")
def test_bad_budgets_fail_fast_before_the_model_loads(tiny_index_dir: Path, capfd, monkeypatch) -> None:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    serve = ["-q", "serve", "--index", str(tiny_index_dir), "--port", "0"]
    try:
        err = fails_fast([*serve, "--max-batch-tokens", "-5"], capfd)
        assert err.splitlines() == ["error: the batch token budget (--max-batch-tokens, RETRIEVER_MAX_BATCH_TOKENS) "
                                    "must be a positive integer, or 0 to turn it off; got -5"]
        assert "--max-batch-tokens: invalid int value: 'lots'" in fails_fast(
            [*serve, "--max-batch-tokens", "lots"], capfd, code=2)
        monkeypatch.setenv("RETRIEVER_MAX_BATCH_TOKENS", "lots")
        assert "environment variable RETRIEVER_MAX_BATCH_TOKENS='lots' is invalid" in fails_fast(serve, capfd)
        monkeypatch.setenv("RETRIEVER_MAX_BATCH_TOKENS", "-1")
        assert "must be a positive integer, or 0 to turn it off; got -1" in fails_fast(serve, capfd)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


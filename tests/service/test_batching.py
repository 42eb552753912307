"""The dynamic batcher: concurrent queries share one encoder call; bounds, deadlines and cancellation."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from retriever.errors import DeadlineExceededError, OverloadedError
from retriever.query import Query
from retriever.searcher import Searcher
from retriever.service.batching import AUTO_BUDGET_FACTOR, BatchCost, Batcher, BoundQuery, CancelledError, bind
from retriever.service.registry import Generation
from tests.service.helpers import GatedEncoder, wait_until


@pytest.fixture()
def generation(tiny_index, encoder):
    return Generation("tiny", 1, Searcher(tiny_index, encoder), "now")


def planned(generation, text, k=3, sources=(), threshold=None):
    return BoundQuery(generation, generation.searcher.plan(Query(text, "", sources, k, threshold)))


def test_queued_queries_are_encoded_in_one_call(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=16, wait_seconds=0.0)
    try:
        gated.gate.clear()
        first = batcher.submit([planned(generation, "first")])
        assert gated.entered.wait(10)
        rest = [batcher.submit([planned(generation, f"query {i}", k=1 + i % 3)]) for i in range(6)]
        gated.gate.set()
        assert first.result(30)[0].hits
        results = [f.result(30)[0] for f in rest]
        assert [len(r.hits) for r in results] == [1 + i % 3 for i in range(6)]
        assert gated.calls[1] == [f"query {i}" for i in range(6)]  # one encoder call for all six
        assert batcher.stats.largest_batch == 6
    finally:
        batcher.stop()


def test_max_batch_one_encodes_one_query_per_call(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=1)
    try:
        gated.gate.clear()
        futures = [batcher.submit([planned(generation, f"q{i}")]) for i in range(4)]
        gated.gate.set()
        assert all(f.result(30)[0].hits for f in futures)
        assert [len(c) for c in gated.calls] == [1, 1, 1, 1]
    finally:
        batcher.stop()


def test_bound_deadline_cancellation_and_threshold(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=8, max_queued=3)
    try:
        gated.gate.clear()
        busy = batcher.submit([planned(generation, "busy")])
        assert gated.entered.wait(10)
        late = batcher.submit([planned(generation, "late")], deadline=time.monotonic() + 0.05)
        gone = batcher.submit([planned(generation, "gone")], is_active=lambda: False)
        with pytest.raises(OverloadedError):
            batcher.submit([planned(generation, "a"), planned(generation, "b")])
        with pytest.raises(DeadlineExceededError):
            batcher.submit([planned(generation, "expired")], deadline=time.monotonic() - 1)
        kept = batcher.submit([planned(generation, "music band", k=10, threshold=0.2)])
        time.sleep(0.1)
        gated.gate.set()
        assert busy.result(30)[0].hits
        with pytest.raises(DeadlineExceededError):
            late.result(30)
        with pytest.raises(CancelledError):
            gone.result(30)
        assert all(h.score >= 0.2 for h in kept.result(30)[0].hits)
        assert not any(q in ("late", "gone") for call in gated.calls for q in call)
        wait_until(lambda: batcher.stats.in_flight == 0)
        assert batcher.stats.expired == 1 and batcher.stats.cancelled == 1 and batcher.stats.rejected == 1
    finally:
        batcher.stop()


def test_encoder_failure_fails_the_batch_and_the_worker_survives(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated)
    try:
        gated.fail = RuntimeError("boom")
        with pytest.raises(RuntimeError):
            batcher.search([planned(generation, "x")], timeout=30)
        gated.fail = None
        assert batcher.search([planned(generation, "music")], timeout=30)[0].hits
    finally:
        batcher.stop()


def test_bind_plans_every_query_of_a_call_on_one_generation(tiny_index, encoder):
    first, second = (Generation("tiny", n, Searcher(tiny_index, encoder), "now") for n in (1, 2))
    current = {"tiny": first}
    calls = []

    def generation_of(name):
        calls.append(name)
        found = current[name]
        current[name] = second  # a publish swaps the generation after the first lookup
        return found

    bound = bind([("tiny", Query("a")), ("tiny", Query("b", instruction="use tables only"))], generation_of)
    assert [b.generation for b in bound] == [first, first] and calls == ["tiny"]
    assert bound[1].planned.sources and bound[1].planned.resolved


def test_search_turns_a_missed_deadline_into_deadline_exceeded(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, wait_seconds=0.0)
    try:
        gated.gate.clear()
        with pytest.raises(DeadlineExceededError):
            batcher.search([planned(generation, "slow")], timeout=0.05)  # picked up, then held past deadline + grace
    finally:
        gated.gate.set()
        batcher.stop()


def counting_rank(monkeypatch, generation) -> list[int]:
    """Count the rows the generation's searcher ranks."""
    ranked: list[int] = []
    rank = generation.searcher.rank

    def spy(planned, vectors):
        ranked.append(len(planned))
        return rank(planned, vectors)

    monkeypatch.setattr(generation.searcher, "rank", spy)
    return ranked


def test_a_deadline_passing_during_encoding_skips_the_search(encoder, generation, monkeypatch):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=8, wait_seconds=0.0)
    ranked = counting_rank(monkeypatch, generation)
    try:
        gated.gate.clear()
        slow = batcher.submit([planned(generation, "slow to encode")], deadline=time.monotonic() + 0.2)
        assert gated.entered.wait(10)  # the worker is encoding it
        time.sleep(0.3)  # the deadline passes mid-encoding
        gated.gate.set()
        with pytest.raises(DeadlineExceededError, match="while the query was encoded"):
            slow.result(30)
        wait_until(lambda: batcher.stats.in_flight == 0)
        assert ranked == [] and batcher.stats.dropped_after_encoding == 1 and batcher.stats.expired == 1
        assert batcher.search([planned(generation, "music")], timeout=30)[0].hits and ranked == [1]
    finally:
        batcher.stop()


def test_a_caller_returns_at_its_deadline_and_its_job_is_never_encoded(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=8, wait_seconds=0.0)
    try:
        gated.gate.clear()
        busy = batcher.submit([planned(generation, "busy")])
        assert gated.entered.wait(10)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            batcher.search([planned(generation, "waits behind busy")], timeout=0.2)
        assert time.monotonic() - started < 0.6  # at its deadline, not a grace period later
        gated.gate.set()
        assert busy.result(30)[0].hits
        wait_until(lambda: batcher.stats.in_flight == 0)
        assert not any("waits behind busy" in q for call in gated.calls for q in call)
        assert batcher.stats.expired == 1
    finally:
        batcher.stop()


def test_a_caller_that_goes_away_returns_at_once_and_its_job_is_never_encoded(encoder, generation):
    import threading

    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=8, wait_seconds=0.0)
    callbacks: list = []
    outcome: list = []
    try:
        gated.gate.clear()
        busy = batcher.submit([planned(generation, "busy")])
        assert gated.entered.wait(10)

        def call() -> None:
            try:
                batcher.search([planned(generation, "abandoned")], timeout=30, on_end=callbacks.append)
            except CancelledError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_until(lambda: callbacks)
        callbacks[0]()  # what gRPC does when the client cancels
        caller.join(2)
        assert not caller.is_alive() and len(outcome) == 1
        gated.gate.set()
        assert busy.result(30)[0].hits
        wait_until(lambda: batcher.stats.in_flight == 0)
        assert not any("abandoned" in q for call in gated.calls for q in call)
        assert batcher.stats.cancelled == 1
    finally:
        batcher.stop()


def test_batch_cost_interpolates_between_sizes_it_has_seen():
    cost = BatchCost(alpha=0.5)
    assert not cost.known and cost.seconds(4) == 0.0
    cost.observe(1, 0.010)
    cost.observe(8, 0.080)
    assert cost.seconds(1) == pytest.approx(0.010)
    assert cost.seconds(4) == pytest.approx(0.010 + 0.070 * 3 / 7)  # between 1 and 8
    assert cost.seconds(16) == pytest.approx(0.160)  # scaled from the largest seen
    cost.observe(8, 0.040)  # moving average: half way
    assert cost.seconds(8) == pytest.approx(0.060)
    assert cost.work(20, max_batch=8) == pytest.approx(2 * 0.060 + cost.seconds(4))
    assert cost.work(0, max_batch=8) == 0.0


def seeded(batcher, per_query=0.1):
    """Cost estimate: every batch takes ``per_query`` seconds per query (no calibration run)."""
    for size in (1, batcher.max_batch):
        batcher.cost.observe(size, per_query * size)


def test_a_busy_batcher_refuses_calls_it_expects_to_answer_after_the_budget(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=4, wait_seconds=0.0, latency_budget=0.35)
    seeded(batcher)  # 0.1 s per query
    try:
        gated.gate.clear()
        busy = batcher.submit([planned(generation, "busy")])
        assert gated.entered.wait(10)  # the worker is in a batch of one (~0.1 s left at most)
        # each queued query adds 0.1 s: the call that would end after ~0.35 s is refused
        admitted = [batcher.submit([planned(generation, f"q{i}")]) for i in range(2)]
        assert batcher.expected_seconds(1) <= 0.41
        with pytest.raises(OverloadedError, match="latency budget"):
            for i in range(3):
                batcher.submit([planned(generation, f"over {i}")])
        assert batcher.stats.over_budget == 1
        assert batcher.reserve(1) is None and batcher.stats.over_budget == 2
        gated.gate.set()
        assert busy.result(30)[0].hits and all(f.result(30)[0].hits for f in admitted)
        wait_until(lambda: batcher.stats.in_flight == 0)
        # idle: any call is admitted, even one whose own batches exceed the budget
        big = batcher.submit([planned(generation, f"big {i}") for i in range(12)])
        assert len(big.result(30)) == 12
    finally:
        batcher.stop()


def test_calls_admitted_together_are_counted_before_they_are_queued(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=4, wait_seconds=0.0, latency_budget=0.25)
    seeded(batcher)  # 0.1 s per query
    try:
        first = batcher.reserve(1)  # idle: admitted
        second = batcher.reserve(1)  # 0.2 s expected with the first counted: admitted
        assert first is not None and second is not None
        assert batcher.reserve(1) is None  # 0.3 s: refused, though nothing is queued yet
        assert batcher.stats.over_budget == 1
        second.release()
        second.release()  # idempotent
        third = batcher.reserve(1)
        assert third is not None and batcher.expected_seconds(1) == pytest.approx(0.3)
        gated.gate.clear()
        future = batcher.submit([planned(generation, "first")], admitted=True, reservation=first)
        assert gated.entered.wait(10)  # in a batch now: ~0.1 s left, and the third still counted
        assert batcher.expected_seconds(1) == pytest.approx(0.3, abs=0.02)  # counted once, not twice
        first.release()  # consumed when queued: releasing it later changes nothing
        assert batcher.expected_seconds(1) == pytest.approx(0.3, abs=0.02)
        third.release()
        assert batcher.expected_seconds(1) == pytest.approx(0.2, abs=0.02)
        gated.gate.set()
        assert future.result(30)[0].hits
    finally:
        batcher.stop()


def test_a_client_calling_again_as_soon_as_it_is_answered_finds_the_batcher_idle(encoder, generation):
    # the worker's bookkeeping after a batch (metrics, the cost estimate) must not count as work in
    # progress: a lone client's next call, sent the moment its answer arrives, was refused by a tight
    # budget while the worker was still marked busy with the batch it had just answered
    batcher = Batcher(encoder, max_batch=4, wait_seconds=0.0, latency_budget=0.12,
                      on_batch=lambda timings: time.sleep(0.05))  # slow bookkeeping after each answer
    seeded(batcher)  # 0.1 s per query: any call judged "busy" is expected past the 0.12 s budget
    try:
        for i in range(5):
            assert batcher.search([planned(generation, f"call {i}")], 30)[0].hits
        assert batcher.stats.over_budget == 0
    finally:
        batcher.stop()


def test_without_a_budget_only_the_queue_bound_refuses(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=4, wait_seconds=0.0, max_queued=6, latency_budget=None)
    seeded(batcher)
    try:
        gated.gate.clear()
        busy = batcher.submit([planned(generation, "busy")])
        assert gated.entered.wait(10)
        queued = [batcher.submit([planned(generation, f"q{i}")]) for i in range(6)]  # 0.6 s of work
        with pytest.raises(OverloadedError, match="too many queries queued"):
            batcher.submit([planned(generation, "seventh")])
        gated.gate.set()
        assert busy.result(30)[0].hits and all(f.result(30)[0].hits for f in queued)
    finally:
        batcher.stop()


def test_auto_budget_is_anchored_on_one_querys_calibrated_time(encoder):
    batcher = Batcher(encoder, max_batch=4, latency_budget="auto")
    try:
        batcher.cost.observe(1, 0.5)
        assert batcher.budget_seconds() == pytest.approx(AUTO_BUDGET_FACTOR * 0.5)  # before calibration: the estimate
        batcher.calibrate()
        one, four = batcher.idle_one_query, batcher.cost.seconds(4)
        assert one is not None and 0 < one and 0 < four
        assert batcher.budget_seconds() == pytest.approx(AUTO_BUDGET_FACTOR * one)
        # batches slowed by a busy machine move the cost estimate, not the budget: the SLO does not loosen
        for _ in range(20):
            batcher.cost.observe(1, 10 * one)
        assert batcher.cost.seconds(1) > 5 * one
        assert batcher.budget_seconds() == pytest.approx(AUTO_BUDGET_FACTOR * one)
    finally:
        batcher.stop()


def test_the_servers_own_queries_skip_the_budget(encoder, generation):
    gated = GatedEncoder(encoder)
    batcher = Batcher(gated, max_batch=4, wait_seconds=0.0, latency_budget=1e-6)
    seeded(batcher)
    try:
        gated.gate.clear()
        busy = batcher.submit([planned(generation, "busy")])
        assert gated.entered.wait(10)
        with pytest.raises(OverloadedError):
            batcher.submit([planned(generation, "a caller's query")])
        with ThreadPoolExecutor(1) as pool:  # a publish's canary query while the server is over budget
            canary = pool.submit(batcher.search, [planned(generation, "canary")], 30, admitted=True)
            time.sleep(0.05)
            gated.gate.set()
            assert canary.result(30)[0].hits
        assert busy.result(30)[0].hits
    finally:
        batcher.stop()

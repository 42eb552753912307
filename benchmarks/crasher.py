"""Crasher: kill -9 the server and index builds at random while clients query, and check every answer.

    python benchmarks/crasher.py --minutes 20            # the documented run
    python benchmarks/crasher.py --minutes 1 --name smoke

Modelled on Qdrant's crasher. Setup: the sample corpus is split into two halves, A and B (no
record in common), each built once into ``WORK/root``. Reference answers for a fixed set of
queries are taken from a server serving A, then B (published), before any chaos.

Then, for ``--minutes``, with ``--clients`` threads querying ``retriever serve`` continuously
(plain gRPC, one channel each, retrying when the server is down), a chaos loop draws one event
at a time:

* **kill the server** with SIGKILL and start a new one (a new *incarnation*, generations from 1);
* **publish** A, B or a build made during the run, through ``PublishIndex`` with the admin token;
* **kill a build**: ``retriever build-index`` of corpus A into a fresh directory under the publish
  root, killed with SIGKILL after a random delay (0.5–25 s). Its output directory must then be
  absent or a complete index that loads and verifies (``Index.load``); a complete one is published.

Checks (a failure of any is a *wrong answer* or a *partial index*):

* every answer's hits all come from one build's records (A or B: builds never mix);
* every answer equals that build's reference answer for the query: the same units in the same
  order, scores within 1e-4 (ties within that may swap);
* all answers from one (incarnation, generation) come from the same build;
* no build directory that was killed is left half-written.

Calls that fail with UNAVAILABLE or CANCELLED while the server is down or restarting, or with
RESOURCE_EXHAUSTED (the latency budget) while the machine is busy, are counted,
not failures; any other error code is a failure. Writes ``benchmarks/results/crasher_<name>.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_test import ServerProcess, same_answer  # noqa: E402

from retriever.service.proto import retriever_pb2 as pb  # noqa: E402
from retriever.service.proto import retriever_pb2_grpc  # noqa: E402

ADMIN_TOKEN = "crasher-admin-token-0123456789"
QUERIES = [
    "who founded the club?", "what genre is the album?", "when was he born?", "which team won the match?",
    "where is the company based?", "population of the town", "who directed the film?", "spouse of the senator",
    "what language is spoken there?", "how tall is the building?", "who played in the band", "music of the band",
    "when did the war end?", "capital of the country", "what award did she win?", "which party does he belong to?",
]
SOURCES = [(), (pb.SOURCE_TABLE,), (pb.SOURCE_KB,), (pb.SOURCE_TEXT, pb.SOURCE_INFOBOX)]
TOP_K = 5
SCORE_TOLERANCE = 1e-4


@dataclass
class Answer:
    incarnation: int
    generation: int
    query: int
    hits: list[tuple[str, int, float]]  # (record_id, unit_id, score)


@dataclass
class State:
    answers: list[Answer] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    incarnation: int = 0
    address: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def split_corpus(work: Path) -> tuple[Path, Path]:
    from retriever.sample import SAMPLE_CORPUS, data_file

    with gzip.open(data_file(SAMPLE_CORPUS), "rt", encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    a, b = work / "corpus_a.jsonl", work / "corpus_b.jsonl"
    a.write_text("".join(lines[0::2]), encoding="utf-8")
    b.write_text("".join(lines[1::2]), encoding="utf-8")
    return a, b


def build(corpus: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "retriever", "build-index", str(corpus), "--out", str(out), "--no-progress"],
                   cwd=ROOT, check=True, capture_output=True)


def start_server(index: Path, root: Path) -> ServerProcess:
    """``retriever serve`` of ``index`` with publishing on (admin token) from ``root``; SERVING on return."""
    return ServerProcess(index, name="crash", extra=["--publish-root", str(root), "--grace", "2"],
                         env={"RETRIEVER_ADMIN_TOKEN": ADMIN_TOKEN})


def ask(stub: Any, query: int, timeout: float = 30.0) -> tuple[int, list[tuple[str, int, float]]]:
    request = pb.RetrieveRequest(query=QUERIES[query % len(QUERIES)], top_k=TOP_K,
                                 sources=SOURCES[query // len(QUERIES)])
    response = stub.Retrieve(request, timeout=timeout)
    return response.generation, [(h.record_id, h.unit_id, h.score) for h in response.hits]


def client(state: State, seed: int) -> None:
    rng = random.Random(seed)
    address, channel, stub = "", None, None
    while not state.stop.is_set():
        if state.address != address:
            if channel is not None:
                channel.close()
            address = state.address
            channel = grpc.insecure_channel(address)
            stub = retriever_pb2_grpc.RetrieverStub(channel)
        incarnation = state.incarnation
        query = rng.randrange(len(QUERIES) * len(SOURCES))
        try:
            generation, hits = ask(stub, query)
        except grpc.RpcError as exc:
            with state.lock:
                state.codes[exc.code().name] += 1
            time.sleep(0.05)
            continue
        with state.lock:
            state.codes["OK"] += 1
            state.answers.append(Answer(incarnation, generation, query, hits))
    if channel is not None:
        channel.close()


def publish(address: str, path: Path) -> tuple[str, str]:
    with grpc.insecure_channel(address) as channel:
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        try:
            response = stub.PublishIndex(pb.PublishIndexRequest(index="crash", path=str(path)), timeout=300,
                                         metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
            return "OK", str(response.info.generation)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""


def references(address: str) -> dict[int, list[tuple[str, int, float]]]:
    with grpc.insecure_channel(address) as channel:
        stub = retriever_pb2_grpc.RetrieverStub(channel)
        return {q: ask(stub, q)[1] for q in range(len(QUERIES) * len(SOURCES))}


def same(a: list[tuple[str, int, float]], b: list[tuple[str, int, float]]) -> bool:
    """Equal answers (:func:`load_test.same_answer` over the unit ids and scores)."""
    return same_answer([(unit, score) for _, unit, score in a], [(unit, score) for _, unit, score in b],
                       SCORE_TOLERANCE)


def check(state: State, records: dict[str, set[str]], refs: dict[str, dict[int, list]]) -> dict[str, Any]:
    wrong, examples = 0, list[dict[str, Any]]()
    served: dict[tuple[int, int], set[str]] = {}
    for answer in state.answers:
        ids = {h[0] for h in answer.hits}
        owners = [name for name, recs in records.items() if ids and ids <= recs]
        ok = len(owners) == 1 and same(answer.hits, refs[owners[0]][answer.query])
        if owners:
            served.setdefault((answer.incarnation, answer.generation), set()).add(owners[0])
        if not ok:
            wrong += 1
            if len(examples) < 5:
                examples.append({"incarnation": answer.incarnation, "generation": answer.generation,
                                 "query": answer.query, "owners": owners, "hits": answer.hits[:3]})
    mixed = [f"{k[0]}/{k[1]}: {sorted(v)}" for k, v in served.items() if len(v) > 1]
    return {"wrong_answers": wrong, "examples": examples, "generations_serving_two_builds": mixed}


def run(minutes: float, clients: int, seed: int, work: Path) -> dict[str, Any]:
    from retriever.index import Index

    rng = random.Random(seed)
    root = work / "root"
    root.mkdir(parents=True)
    corpus_a, corpus_b = split_corpus(work)
    build_a, build_b = root / "a", root / "b"
    build(corpus_a, build_a)
    build(corpus_b, build_b)
    records = {"a": set(Index.load(build_a, use_gpu=False).store.record_ids),
               "b": set(Index.load(build_b, use_gpu=False).store.record_ids)}
    server = start_server(build_a, root)
    address = server.address
    refs = {"a": references(address)}
    assert publish(address, build_b)[0] == "OK"
    refs["b"] = references(address)
    state = State(incarnation=1, address=address)
    complete_builds = [build_a, build_b]
    events: Counter[str] = Counter()
    partial: list[str] = []
    publish_codes: Counter[str] = Counter()
    threads = [threading.Thread(target=client, args=(state, seed + i), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    started = time.monotonic()
    end = started + minutes * 60
    build_number = 0
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.5, 4.0))
            event = rng.choice(["kill_server", "publish", "publish", "kill_build"])
            events[event] += 1
            if event == "kill_server":
                server.process.send_signal(signal.SIGKILL)
                server.process.wait(30)
                server = start_server(rng.choice([build_a, build_b]), root)
                address = server.address
                with state.lock:
                    state.incarnation += 1
                    state.address = address
            elif event == "publish":
                code, _ = publish(address, rng.choice(complete_builds))
                publish_codes[code] += 1
            else:
                build_number += 1
                out = root / f"run-{build_number}"
                builder = subprocess.Popen(
                    [sys.executable, "-m", "retriever", "build-index", str(corpus_a), "--out", str(out),
                     "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    builder.wait(rng.uniform(0.5, 25.0))
                except subprocess.TimeoutExpired:
                    builder.send_signal(signal.SIGKILL)
                    builder.wait(30)
                    events["builds_killed"] += 1
                if out.exists():
                    try:
                        Index.load(out, use_gpu=False)
                    except Exception as exc:  # a half-written index: the failure this checks for
                        partial.append(f"{out.name}: {exc}")
                        continue
                    complete_builds.append(out)  # corpus A: its answers must equal A's
                    code, _ = publish(address, out)
                    publish_codes[code] += 1
    finally:
        state.stop.set()
        for t in threads:
            t.join(60)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
    result = check(state, records, refs)
    return {
        "minutes": minutes, "clients": clients, "seed": seed,
        "events": dict(events), "publish_codes": dict(publish_codes), "call_codes": dict(state.codes),
        "answers_checked": len(state.answers), "partial_indexes": partial, **result,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="how long the chaos runs (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="client threads querying throughout (default 4)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="run", help="result file: benchmarks/results/crasher_NAME.json")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="crasher-"))
    try:
        result = run(args.minutes, args.clients, args.seed, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "benchmarks" / "results" / f"crasher_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("events", "answers_checked", "wrong_answers", "partial_indexes",
                                             "generations_serving_two_builds", "call_codes")}, indent=2))
    failed = result["wrong_answers"] or result["partial_indexes"] or result["generations_serving_two_builds"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

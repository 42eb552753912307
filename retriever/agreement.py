"""May queries encoded one way search documents encoded another way? The recorded agreement check.

An index records the backend and precision that encoded its documents (``Manifest.encoding``).
Searching it with an encoder of another backend or precision is allowed only when this check passed
for that pair on the same model and was recorded in the model directory (``agreement.json``):

- the canary documents (the first :data:`CANARY_DOCS` units of the bundled sample corpus) encoded
  both ways have cosine >= :data:`MIN_COSINE` each;
- for every canary question (the bundled sample queries), the top-:data:`TOP_K` canary documents
  (encoded the index's way) are the same set whether the question is encoded the index's way or
  the other way.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from retriever.encoder import Encoder
from retriever.errors import IncompatibleIndexError, ModelError
from retriever.index import load_units
from retriever.index.files import write_json_atomic
from retriever.index.manifest import Manifest
from retriever.linearize import WindowBudget
from retriever.sample import SAMPLE_CORPUS, data_file, sample_questions

logger = logging.getLogger(__name__)

AGREEMENT_FILE = "agreement.json"
MIN_COSINE = 0.99
TOP_K = 10
CANARY_DOCS = 256
CANARY_QUERIES = 64


def label(encoding: dict[str, str]) -> str:
    return f"{encoding['backend']}/{encoding['precision']}"


@dataclass(frozen=True)
class Agreement:
    documents: dict[str, str]  # the encoding of the index's documents
    queries: dict[str, str]  # the encoding the queries would use
    min_cosine: float
    mean_cosine: float
    same_top_k: float  # share of canary questions with the same top-k set
    canary_docs: int
    canary_queries: int
    passed: bool
    created: str


def canary_texts(encoder: Encoder) -> tuple[list[str], list[str]]:
    """The fixed canary documents and questions (from the sample data shipped in the package)."""
    budget = WindowBudget(encoder.max_seq_length - 2, encoder.count_tokens)
    _, units = load_units(data_file(SAMPLE_CORPUS), None, budget)
    questions = [q.text for q in sample_questions()]
    return [u.text for u in units[:CANARY_DOCS]], questions[:CANARY_QUERIES]


def check_agreement(documents: Encoder, queries: Encoder) -> Agreement:
    """Run the check between two encoders of one model and record it in the model directory.

    Raises:
        ModelError: the encoders load different models.
    """
    if documents.checksum != queries.checksum:
        raise ModelError("the agreement check compares two encodings of one model; these load different models")
    docs, questions = canary_texts(documents)
    d_doc = documents.encode_documents(docs, show_progress=False)  # [n_docs, dim]
    d_query = queries.encode_documents(docs, show_progress=False)
    cosine = np.sum(d_doc * d_query, axis=1)  # rows are L2-normalised
    q_doc = documents.encode_queries(questions)  # [n_q, dim]
    q_query = queries.encode_queries(questions)
    k = min(TOP_K, len(docs))
    top_doc = np.argsort(-(q_doc @ d_doc.T), axis=1)[:, :k]
    top_query = np.argsort(-(q_query @ d_doc.T), axis=1)[:, :k]
    same = [set(a) == set(b) for a, b in zip(top_doc.tolist(), top_query.tolist())]
    record = Agreement(
        documents=documents.encoding, queries=queries.encoding, min_cosine=round(float(cosine.min()), 5),
        mean_cosine=round(float(cosine.mean()), 5), same_top_k=round(sum(same) / len(same), 4),
        canary_docs=len(docs), canary_queries=len(questions),
        passed=bool(cosine.min() >= MIN_COSINE and all(same)),
        created=datetime.now(UTC).isoformat(timespec="seconds"))
    _save(documents.model_dir, record)
    logger.info("agreement %s documents / %s queries: min cosine %.5f, same top-%d %.2f%% -> %s",
                label(record.documents), label(record.queries), record.min_cosine, k, 100 * record.same_top_k,
                "passed" if record.passed else "failed")
    return record


def recorded(model_dir: Path, documents: dict[str, str], queries: dict[str, str]) -> Agreement | None:
    """The last recorded check for exactly these two encodings (export checksums included), if any."""
    path = model_dir / AGREEMENT_FILE
    if not path.is_file():
        return None
    try:
        records = [Agreement(**r) for r in orjson.loads(path.read_bytes())["checks"]]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable ({exc}); delete it and run `retriever check-agreement` again") from exc
    found = [r for r in records if r.documents == documents and r.queries == queries]
    return found[-1] if found else None


def _save(model_dir: Path, record: Agreement) -> None:
    path = model_dir / AGREEMENT_FILE
    checks = []
    if path.is_file():
        checks = [c for c in orjson.loads(path.read_bytes()).get("checks", [])
                  if (c.get("documents"), c.get("queries")) != (record.documents, record.queries)]
    write_json_atomic(path, {"format": 1, "checks": [*checks, asdict(record)]})


def check_encoding(manifest: Manifest, encoder: Encoder, where: str) -> None:
    """Refuse queries encoded another way than the index's documents unless a passed check is recorded.

    Raises:
        IncompatibleIndexError: the encodings differ and no passed agreement check is recorded
            (served as FAILED_PRECONDITION); the message names both encodings and the fix.
    """
    documents, queries = manifest.encoding, encoder.encoding
    if documents == queries:
        return
    found = recorded(encoder.model_dir, documents, queries)
    if found is not None and found.passed:
        logger.info("%s: documents encoded with %s, queries with %s (agreement check of %s passed: min cosine "
                    "%.4f)", where, label(documents), label(queries), found.created, found.min_cosine)
        return
    why = ("no agreement check between them is recorded" if found is None else
           f"their agreement check failed (min cosine {found.min_cosine:.4f}, same top-{TOP_K} "
           f"{100 * found.same_top_k:.0f}%; needs >= {MIN_COSINE} and 100%)")
    if label(documents) == label(queries):  # the same names: another export of the model
        raise IncompatibleIndexError(
            f"{where} was encoded with {label(documents)} export {str(documents.get('export_sha256'))[:12]} but the "
            f"model's {label(queries)} export is now {str(queries.get('export_sha256'))[:12]} (the model was exported "
            f"again since the index was built, with another version of the exporter or other weights), and {why}; "
            f"rebuild the index with the current export")
    raise IncompatibleIndexError(
        f"{where} was encoded with {label(documents)} but queries would be encoded with {label(queries)}, and {why}; "
        f"serve it with --backend {documents['backend']} --precision {documents['precision']}, rebuild the index "
        f"with {label(queries)}, or run `retriever check-agreement {where} --backend {queries['backend']} "
        f"--precision {queries['precision']}`")

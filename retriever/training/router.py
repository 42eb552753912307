"""Train and measure a model's source router (:class:`retriever.router.SourceRouter`).

The router (``[router] kind``) is LoRA adapters on the model's own transformer with a linear head
(:func:`fit_tuned`), or a small head on the model's frozen embedding of the instruction
(:func:`fit_head`), fitted to the labelled instructions of
:func:`~retriever.training.instruction_pool.router_examples` (``train`` split) and measured on the
held-apart ``dev`` split, whose frames, source names and connectives never occur in training. Two
other readers are measured the same way (``benchmarks/router_compare.py``): prototype similarity
(the nearest mean embedding of each labelled set) and the keyword rules.

Figures per reader (``score_readings``): exact-set accuracy of the reading (all, and per kind:
single, multi, negation, unnamed), per-source precision and recall of the sets read, and, at a
confidence threshold, what the server would do: the share of instructions it filters correctly,
filters wrongly (a hard filter to the wrong sources) or leaves to the encoder.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retriever.instructions import resolve_sources
from retriever.records import Source
from retriever.router import (
    ROUTER_SOURCES,
    TAGS,
    Embed,
    NamePrototypes,
    Router,
    Routing,
    SourceRouter,
    TunedRouter,
    TunedSpec,
    adapted_network,
)
from retriever.training.config import RouterConfig
from retriever.training.instruction_pool import RouterExample, router_examples

logger = logging.getLogger(__name__)

KINDS = ("single", "multi", "negation", "unnamed")
#: Confidence thresholds reported in the sweep.
SWEEP = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def targets(examples: Sequence[RouterExample]) -> np.ndarray:
    """float32 ``[n, 5]``: names a source at all, then allows each of :data:`ROUTER_SOURCES`."""
    out = np.zeros((len(examples), 1 + len(ROUTER_SOURCES)), np.float32)
    for i, example in enumerate(examples):
        out[i, 0] = bool(example.sources)
        for j, source in enumerate(ROUTER_SOURCES, 1):
            out[i, j] = source in example.sources
    return out


def fit_head(x: np.ndarray, examples: Sequence[RouterExample], hidden: int, steps: int, lr: float,
             weight_decay: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit the head (``hidden`` 0: one logistic layer) by full-batch Adam on binary cross-entropy.

    The gate learns from every instruction; each source's output only from the instructions
    that name a source (for the others it is never read).

    Returns:
        ``(weight [in, out], bias [out])`` per layer, float32.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(np.asarray(x, np.float32))  # [n, dim]
    y = torch.from_numpy(targets(examples))  # [n, 5]
    mask = torch.ones_like(y)
    mask[:, 1:] = y[:, :1]  # sources count only where a source is named
    sizes = [inputs.shape[1], *([hidden] if hidden else []), y.shape[1]]
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        w = (torch.randn(fan_in, fan_out, generator=generator) / fan_in ** 0.5).requires_grad_()
        params.append((w, torch.zeros(fan_out, requires_grad=True)))
    optimizer = torch.optim.AdamW([t for pair in params for t in pair], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        h = inputs
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = torch.relu(h)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(h, y, weight=mask, reduction="sum") / len(y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logger.debug("router head fitted: final loss %.4f", float(loss.detach()))
    return [(w.detach().numpy().copy(), b.detach().numpy().copy()) for w, b in params]


def tag_targets(tokenizer: Any, examples: Sequence[RouterExample], max_length: int) -> tuple[Any, Any]:
    """Tokenized instructions and each token's tag (:data:`~retriever.router.TAGS`; -100 on padding).

    A token is tagged with a mention (source, asked for or excluded) when its characters overlap
    the mention's; every other token is "not a source name".

    Raises:
        ValueError: an example allows sources but has no mentions (a tuned router learns where
            sources are named).
    """
    import torch

    for example in examples:
        if example.sources and not example.mentions:
            raise ValueError(f"instruction {example.text!r} allows sources but marks no mention of them")
    batch = tokenizer([e.text for e in examples], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt", return_offsets_mapping=True)
    offsets = batch.pop("offset_mapping").tolist()  # [n, tokens, 2]
    tags = torch.zeros(len(examples), len(offsets[0]), dtype=torch.long)
    for i, example in enumerate(examples):
        for t, (start, end) in enumerate(offsets[i]):
            for m in example.mentions:
                if start < end and start < m.end and end > m.start:
                    tags[i, t] = 1 + 2 * ROUTER_SOURCES.index(m.source) + int(m.excluded)
    tags[batch["attention_mask"] == 0] = -100
    return batch, tags


def name_prototypes(examples: Sequence[RouterExample], embed: Embed) -> NamePrototypes:
    """The model's embedding of every distinct source name the training instructions mention.

    Raises:
        ModelError: the instructions do not name every source type.
    """
    names: dict[tuple[str, Source], None] = {}
    for e in examples:
        for m in e.mentions:
            names[(e.text[m.start:m.end].lower(), m.source)] = None
    texts = [text for text, _ in names]
    labels = np.array([ROUTER_SOURCES.index(source) for _, source in names], np.int64)
    vectors = embed(texts) if texts else np.zeros((0, 1), np.float32)
    return NamePrototypes(np.asarray(vectors, np.float32), labels)


def fit_tuned(model_dir: Path, examples: Sequence[RouterExample], spec: TunedSpec, epochs: int, lr: float,
              head_lr: float, seed: int, model_checksum: str, threshold: float,
              batch_size: int = 32, embed: Embed | None = None) -> TunedRouter:
    """Fit a :class:`~retriever.router.TunedRouter`: LoRA adapters on the model's first
    ``spec.layers`` transformer layers and a linear head tagging each token (a source name, asked
    for or excluded, or not a name), so the whole network reads the instruction's words and the
    set is composed from the names it finds (negations, multi-source requests).

    Cross-entropy over the tokens' tags (:func:`tag_targets`); AdamW (adapters at ``lr``, head at
    ``head_lr``), linear warm-up over the first 10 % of steps and linear decay to 0. With
    ``embed`` (the model's document embedding), the router also gets :func:`name_prototypes`, and
    reads which source a name stands for by its nearest training name.

    Raises:
        ValueError: an example allows sources but marks no mention of them.
    """
    import torch
    from peft import get_peft_model_state_dict
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tag_targets(tokenizer, examples, spec.max_length)  # bad examples fail before the network loads
    network = adapted_network(model_dir, spec)
    head = torch.nn.Linear(network.get_base_model().config.hidden_size, TAGS)
    steps = max(1, epochs * (len(examples) // batch_size))
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": trainable, "lr": lr}, {"params": head.parameters(), "lr": head_lr}],
                                  weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (0.1 * steps)) * max(0.0, 1 - step / steps))
    rng = np.random.default_rng(seed)
    network.train()
    for epoch in range(epochs):
        order = rng.permutation(len(examples))
        total = 0.0
        for i in range(0, len(order) - batch_size + 1, batch_size):
            batch, tags = tag_targets(tokenizer, [examples[j] for j in order[i:i + batch_size]], spec.max_length)
            logits = head(network(**batch).last_hidden_state)  # [batch, tokens, TAGS]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, TAGS), tags.reshape(-1), ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        logger.info("tuned router: epoch %d/%d, mean loss %.4f", epoch + 1, epochs,
                    total / max(1, len(order) // batch_size))
    network.eval()
    adapter = {k: v.detach().float().numpy().copy() for k, v in get_peft_model_state_dict(network).items()}
    trained = (head.weight.detach().numpy().T.copy(), head.bias.detach().numpy().copy())
    # the router keeps the trained network unmerged: it reads exactly as the saved file will once loaded
    prototypes = None if embed is None else name_prototypes(examples, embed)
    return TunedRouter(model_dir, spec, adapter, trained, threshold, model_checksum, network=network,
                       prototypes=prototypes)


@dataclass
class Prototypes:
    """Prototype similarity: the mean embedding of each labelled set; the nearest one is the reading.

    Confidence: the softmax of the cosine similarities at ``temperature``, at the nearest set.
    """

    labels: list[frozenset[Source]]
    centroids: np.ndarray  # [sets, dim], L2-normalised
    temperature: float = 0.02

    @classmethod
    def fit(cls, x: np.ndarray, examples: Sequence[RouterExample], temperature: float = 0.02) -> Prototypes:
        labels = sorted({e.sources for e in examples}, key=lambda s: sorted(v.value for v in s))
        rows = []
        for label in labels:
            mean = x[[i for i, e in enumerate(examples) if e.sources == label]].mean(axis=0)
            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        return cls(labels, np.stack(rows).astype(np.float32), temperature)

    def read(self, x: np.ndarray) -> list[Routing]:
        sims = x @ self.centroids.T / self.temperature  # [n, sets]
        sims -= sims.max(axis=1, keepdims=True)
        p = np.exp(sims)
        p /= p.sum(axis=1, keepdims=True)
        best = p.argmax(axis=1)
        return [Routing(tuple(s for s in ROUTER_SOURCES if s in self.labels[j]), float(p[i, j]))
                for i, j in enumerate(best)]


def read_rules(examples: Sequence[RouterExample]) -> list[Routing]:
    """The keyword rules' reading (always confident)."""
    out = []
    for e in examples:
        found = tuple(resolve_sources(e.text))
        out.append(Routing(() if len(found) == len(ROUTER_SOURCES) else found, 1.0))
    return out


def score_readings(examples: Sequence[RouterExample], readings: Sequence[Routing],
                   threshold: float = 0.0) -> dict[str, Any]:
    """Figures of one reader on labelled instructions (see the module docstring).

    At ``threshold``: ``filtered_right`` filters exactly the allowed sources, ``filtered_wrong``
    filters to any other set, ``unfiltered`` applies no filter (right for ``unnamed``, a loss of
    the filter otherwise; the encoder still reads the instruction).
    """
    n = len(examples)
    exact = [set(r.sources) == set(e.sources) for e, r in zip(examples, readings, strict=True)]
    out: dict[str, Any] = {"n": n, "exact_set_accuracy": _mean(exact)}
    for kind in KINDS:
        picked = [ok for ok, e in zip(exact, examples, strict=True) if e.kind == kind]
        out[f"accuracy[{kind}]"] = _mean(picked)
    for source in ROUTER_SOURCES:
        predicted = [source in r.sources for r in readings]
        gold = [source in e.sources for e in examples]
        both = sum(p and g for p, g in zip(predicted, gold, strict=True))
        out[f"precision[{source.value}]"] = both / sum(predicted) if any(predicted) else 0.0
        out[f"recall[{source.value}]"] = both / sum(gold) if any(gold) else 0.0
    applied = [bool(r.sources) and r.confidence >= threshold for r in readings]
    right = sum(a and ok for a, ok in zip(applied, exact, strict=True))
    out["threshold"] = threshold
    out["filtered_right"] = right / n
    out["filtered_wrong"] = (sum(applied) - right) / n
    out["unfiltered"] = 1.0 - sum(applied) / n
    out["served_right"] = (right + sum(not a and not e.sources for a, e in zip(applied, examples, strict=True))) / n
    return out


def misreadings(examples: Sequence[RouterExample], readings: Sequence[Routing]) -> list[dict[str, Any]]:
    """The instructions read as another set than the one they allow, one dict each (what
    ``retriever train-router --misses`` writes): the text, its kind, the allowed and the read
    sources and the reading's confidence."""
    return [{"text": e.text, "kind": e.kind, "allowed": sorted(s.value for s in e.sources),
             "read": sorted(s.value for s in r.sources), "confidence": round(float(r.confidence), 4)}
            for e, r in zip(examples, readings, strict=True) if set(r.sources) != set(e.sources)]


def sweep(examples: Sequence[RouterExample], readings: Sequence[Routing]) -> list[dict[str, float]]:
    """What the server would do at each threshold of :data:`SWEEP`."""
    rows = []
    for t in SWEEP:
        s = score_readings(examples, readings, t)
        rows.append({k: s[k] for k in ("threshold", "filtered_right", "filtered_wrong", "unfiltered",
                                        "served_right")})
    return rows


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


@dataclass
class RouterReport:
    """A trained router and its figures on the held-apart dev phrasings."""

    router: Router
    dev: dict[str, Any]
    sweep: list[dict[str, float]]
    seconds: float
    #: The dev instructions it read wrong (:func:`misreadings`).
    misses: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.router.threshold, "dev": self.dev, "sweep": self.sweep,
                "seconds": round(self.seconds, 1)}


def train_router(embed: Embed, model_dir: Path, model_checksum: str, config: RouterConfig,
                 seed: int) -> RouterReport:
    """Fit the router (``config.kind``) on the train split; measure it on the dev split."""
    started = time.perf_counter()
    train = router_examples("train", config.train_examples, seed)
    dev = router_examples("dev", config.dev_examples, seed)
    router: Router
    if config.kind == "tuned":
        logger.info("source router: tuning %s layers (LoRA rank %d) on %d training instructions, %d epochs",
                    config.layers or "all", config.rank, len(train), config.epochs)
        router = fit_tuned(model_dir, train, TunedSpec(config.layers, config.rank, config.alpha), config.epochs,
                           config.tuned_lr, config.head_lr, seed, model_checksum, config.threshold, embed=embed)
    else:
        logger.info("source router: embedding %d training and %d dev instructions", len(train), len(dev))
        layers = fit_head(embed([e.text for e in train]), train, config.hidden, config.steps, config.lr,
                          config.weight_decay, seed)
        router = SourceRouter(layers, config.threshold, model_checksum)
    readings = router.read_texts([e.text for e in dev], embed)
    report = RouterReport(router, score_readings(dev, readings, config.threshold), sweep(dev, readings),
                          time.perf_counter() - started, misreadings(dev, readings))
    logger.info("source router on the held-apart dev phrasings: exact set %.3f (negation %.3f, multi %.3f); at "
                "threshold %.2f filters %.3f right, %.3f wrong (%.1fs)", report.dev["exact_set_accuracy"],
                report.dev["accuracy[negation]"], report.dev["accuracy[multi]"], config.threshold,
                report.dev["filtered_right"], report.dev["filtered_wrong"], report.seconds)
    return report


def save_router(report: RouterReport, path: Path) -> None:
    """Write the router (``report.router``) to ``path``."""
    report.router.save(path)
    logger.info("source router saved to %s", path)


def train_model_router(model: str | None, config: RouterConfig, seed: int, out: Path | None = None,
                       device: str | None = None, threads: int | None = None) -> tuple[Path, RouterReport]:
    """Train the source router of a saved model and write it where the model's loader finds it.

    Args:
        model: the model directory, or a bundled name (None: the default model).
        out: where to write; default ``<model>/router.safetensors``, or for a bundled model
            (read-only) the package's ``retriever/data/router-<checksum>.safetensors``.

    Returns:
        The path written and the report.
    """
    from retriever.bundled import canonical_name
    from retriever.encoder import Encoder, EncoderConfig
    from retriever.router import ROUTER_FILE, shipped_router_path

    encoder = Encoder(EncoderConfig(model=model, device=device, show_progress=False, threads=threads))
    if out is None:
        bundled = canonical_name(model) is not None
        out = shipped_router_path(encoder.checksum) if bundled else encoder.model_dir / ROUTER_FILE
    report = train_router(lambda texts: encoder.encode_documents(texts, show_progress=False), encoder.model_dir,
                          encoder.checksum, config, seed)
    save_router(report, out)
    return out, report

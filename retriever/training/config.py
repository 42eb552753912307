"""Typed training configuration, read from TOML and validated once.

One file lists the stages to run and all their numbers (see ``configs/*.toml`` and
``docs/TRAINING.md``). Every section is a frozen dataclass; unknown keys, wrong types and
out-of-range values are :class:`TrainConfigError` naming the section and key. Relative paths
are resolved against the current directory (run from the project root).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from retriever.errors import InvalidInputError
from retriever.linearize.links import DEFAULT_LINK_ROWS
from retriever.records import Source


class TrainConfigError(InvalidInputError):
    """A training configuration is invalid; the message names the section and key."""


class StageName(StrEnum):
    """The three stages of the recipe, in the order they run."""

    PRETRAIN = "pretrain"  # RetroMAE-style masked auto-encoding
    ALIGN = "align"  # text-anchored contrastive alignment
    FINETUNE = "finetune"  # instruction-aware retriever fine-tuning


STAGE_ORDER = (StageName.PRETRAIN, StageName.ALIGN, StageName.FINETUNE)


class DeviceChoice(StrEnum):
    AUTO = "auto"  # cuda when present, else cpu
    CPU = "cpu"
    CUDA = "cuda"


class MixedPrecision(StrEnum):
    AUTO = "auto"  # bf16 on a CUDA device that supports it, fp16 on older CUDA, none on CPU
    NO = "no"
    BF16 = "bf16"
    FP16 = "fp16"


class Pooling(StrEnum):
    """Pooling used when the base is a plain transformers checkpoint (no ``modules.json``)."""

    MEAN = "mean"
    CLS = "cls"
    LASTTOKEN = "lasttoken"  # decoder-only backbones (the LLM variant)


class NegativeMiner(StrEnum):
    BM25 = "bm25"  # bm25s over the training pool, per source type
    MODEL = "model"  # a model's embeddings: ``miner_model``, else the model at the start of the stage
    MIXED = "mixed"  # both, interleaved per source type: lexical look-alikes and the model's own confusions


@dataclass(frozen=True)
class RunConfig:
    """Where outputs go and how the loop runs.

    Attributes:
        output_dir: run directory: stage models, checkpoints, the final ``model/``.
        stages: the stages to run, a subset of pretrain, align, finetune (run in that order).
        seed: seeds data sampling, masking, dropout and instruction sampling.
        device: auto, cpu or cuda.
        precision: mixed precision on CUDA (auto, no, bf16, fp16); CPU always runs fp32.
        log_every: optimizer steps between log lines.
        checkpoint_every: optimizer steps between resumable checkpoints (0: only at stage end).
        keep_checkpoints: how many checkpoints to keep per stage.
        show_progress: show tqdm bars.
        threads: torch CPU threads (0: leave torch's default).
    """

    output_dir: Path
    stages: tuple[StageName, ...] = STAGE_ORDER
    seed: int = 42
    device: DeviceChoice = DeviceChoice.AUTO
    precision: MixedPrecision = MixedPrecision.AUTO
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    show_progress: bool = True
    threads: int = 0

    def validate(self) -> None:
        if not self.stages:
            raise TrainConfigError("[run] stages: list at least one of pretrain, align, finetune")
        if len(set(self.stages)) != len(self.stages):
            raise TrainConfigError(f"[run] stages: a stage is listed twice: {[s.value for s in self.stages]}")
        ordered = tuple(s for s in STAGE_ORDER if s in self.stages)
        if ordered != self.stages:
            raise TrainConfigError(
                f"[run] stages must keep the recipe order pretrain → align → finetune; "
                f"write {[s.value for s in ordered]}")
        _positive("run", "log_every", self.log_every)
        _non_negative("run", "checkpoint_every", self.checkpoint_every)
        _positive("run", "keep_checkpoints", self.keep_checkpoints)
        _non_negative("run", "threads", self.threads)


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters (peft). Trained per stage and merged into the weights after each stage."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def validate(self) -> None:
        _positive("model.lora", "r", self.r)
        _positive("model.lora", "alpha", self.alpha)
        _fraction("model.lora", "dropout", self.dropout)
        if self.enabled and not self.target_modules:
            raise TrainConfigError("[model.lora] target_modules: name the linear layers to adapt, "
                                   "e.g. ['q_proj', 'v_proj']")


@dataclass(frozen=True)
class ModelConfig:
    """The backbone and how it is run.

    Attributes:
        base: a local sentence-transformers directory, a local transformers checkpoint (then
            ``pooling`` builds the embedding head), or ``bundled:all-MiniLM-L6-v2``.
        max_seq_length: training truncation (the saved model keeps the base's own limit).
        pooling: only for plain transformers checkpoints; lasttoken for decoder-only models.
        mask_token: token used for masking when the tokenizer has none (decoder-only models);
            None falls back to the tokenizer's unk token.
        gradient_checkpointing: trade compute for memory (large backbones).
        lora: LoRA adapters instead of full fine-tuning.
    """

    base: str = "bundled:all-MiniLM-L6-v2"
    max_seq_length: int = 128
    pooling: Pooling = Pooling.MEAN
    mask_token: str | None = None
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        if self.max_seq_length < 8:
            raise TrainConfigError(f"[model] max_seq_length must be >= 8, got {self.max_seq_length}")
        self.lora.validate()


@dataclass(frozen=True)
class DataConfig:
    """Training data. Only ``train_queries`` provides questions; dev questions are never trained on.

    Attributes:
        corpus: HeteroMix-format corpus (JSONL or JSONL.gz).
        pool_ids: optional id list restricting the pool of units for stages 1-2 and negatives.
        pool_records: sample this many records (seeded) from the pool; 0 keeps the whole pool.
        train_queries: ``queries.train.jsonl``-format questions with gold record ids.
        max_train_queries: use at most this many training questions (seeded sample); 0: all.
        pairs_files: CompMix data-text pairs files (``raw_data`` / ``nl_text``).
        window_tokens: linearizer window in tokens; 0 uses the base model's max length - 2,
            exactly as ``build-index`` does.
        link_rows: table rows of link context each passage starts with (``build-index
            --link-rows``; :mod:`retriever.linearize.links`), gathered from every table of the corpus.
        lenient: skip corpus fields the record's source type does not have, with a warning per
            field name (``retriever train --lenient``); by default such a field stops the run
            before any training, naming file, line and field (as ``build-index`` does).
    """

    corpus: Path
    train_queries: Path
    pool_ids: Path | None = None
    pool_records: int = 0
    max_train_queries: int = 0
    pairs_files: tuple[Path, ...] = ()
    window_tokens: int = 0
    link_rows: int = DEFAULT_LINK_ROWS
    lenient: bool = False

    def validate(self) -> None:
        _exists("data", "corpus", self.corpus)
        _exists("data", "train_queries", self.train_queries)
        if self.pool_ids is not None:
            _exists("data", "pool_ids", self.pool_ids)
        for i, path in enumerate(self.pairs_files):
            _exists("data", f"pairs_files[{i}]", path)
        _non_negative("data", "pool_records", self.pool_records)
        _non_negative("data", "max_train_queries", self.max_train_queries)
        _non_negative("data", "link_rows", self.link_rows)
        if self.window_tokens and self.window_tokens < 16:
            raise TrainConfigError(f"[data] window_tokens must be 0 (model default) or >= 16, got {self.window_tokens}")
        if "dev" in self.train_queries.name:
            raise TrainConfigError(f"[data] train_queries: {self.train_queries} looks like a dev file; "
                                   "train only on queries.train.jsonl")


@dataclass(frozen=True)
class OptimConfig:
    """Budget and optimizer of one stage (the same keys in every stage section).

    Attributes:
        tokens: the stage's budget in non-padding tokens through the encoder (forward+backward);
            the step count is derived from it. 0 disables the budget and uses ``steps``.
        steps: optimizer steps when ``tokens`` is 0.
        batch_size: examples per micro-batch (also the in-batch negatives of the contrastive stages).
        grad_accum: micro-batches per optimizer step.
        lr: peak learning rate (linear warm-up, linear decay to 0).
        warmup_ratio: share of the steps spent warming up.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        max_grad_norm: gradient clipping (0: none).
    """

    tokens: int = 0
    steps: int = 0
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-5
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0

    def validate_optim(self, section: str) -> None:
        _non_negative(section, "tokens", self.tokens)
        _non_negative(section, "steps", self.steps)
        if not self.tokens and not self.steps:
            raise TrainConfigError(f"[{section}] set a budget: tokens = N (preferred) or steps = N")
        _positive(section, "batch_size", self.batch_size)
        _positive(section, "grad_accum", self.grad_accum)
        if not 0 < self.lr < 1:
            raise TrainConfigError(f"[{section}] lr must be in (0, 1), got {self.lr}")
        _fraction(section, "warmup_ratio", self.warmup_ratio)
        _non_negative(section, "weight_decay", self.weight_decay)
        _non_negative(section, "max_grad_norm", self.max_grad_norm)


@dataclass(frozen=True)
class PretrainConfig(OptimConfig):
    """Stage 1, RetroMAE-style: encoder masks ``encoder_mask_ratio``, decoder ``decoder_mask_ratio``.

    ``source_weights`` sets how often units of each source type are drawn (missing: 1.0).
    ``decoder_heads`` 0 takes the backbone's attention-head count.
    """

    lr: float = 5e-5
    encoder_mask_ratio: float = 0.3
    decoder_mask_ratio: float = 0.5
    decoder_layers: int = 1
    decoder_heads: int = 0
    source_weights: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        self.validate_optim("pretrain")
        _fraction("pretrain", "encoder_mask_ratio", self.encoder_mask_ratio)
        _fraction("pretrain", "decoder_mask_ratio", self.decoder_mask_ratio)
        _positive("pretrain", "decoder_layers", self.decoder_layers)
        _non_negative("pretrain", "decoder_heads", self.decoder_heads)
        _source_weights("pretrain", self.source_weights)


@dataclass(frozen=True)
class AlignConfig(OptimConfig):
    """Stage 2: InfoNCE between structured units and text anchors.

    ``*_weight`` set how often each anchor kind is drawn (0 disables it): the rule-based
    verbalizer, corpus links (row_links, kb parent), and the pairs files.
    """

    temperature: float = 0.02
    symmetric: bool = True
    verbalizer_weight: float = 1.0
    links_weight: float = 1.0
    pairs_weight: float = 1.0

    def validate(self) -> None:
        self.validate_optim("align")
        _temperature("align", self.temperature)
        for name in ("verbalizer_weight", "links_weight", "pairs_weight"):
            _non_negative("align", name, getattr(self, name))
        if not (self.verbalizer_weight or self.links_weight or self.pairs_weight):
            raise TrainConfigError("[align] every anchor weight is 0; enable at least one anchor kind")


@dataclass(frozen=True)
class FinetuneConfig(OptimConfig):
    """Stage 3: InfoNCE over (instruction + question, gold unit) with in-batch and hard negatives.

    Attributes:
        temperature: InfoNCE temperature.
        hard_negatives: mined negatives per question.
        other_source_share: for a source-specific instruction, share of the hard negatives
            taken from the other source types (plus gold units of other sources).
        general_instruction_prob: probability of the general instruction (else a
            source-specific one for a source of the gold records).
        canonical_phrasing_prob: probability of the canonical phrasing (the saved prompt).
        grammar_phrasing_prob: share of the other phrasings drawn from the train half of the
            source router's grammar (many more names and frames: "spreadsheets", "RDF triples",
            "stick to ..."; the dev half stays unseen) instead of the sampler's own few templates.
            0 (default) samples as the shipped recipe did.
        miner: bm25, model, or mixed (BM25's and the model's rankings interleaved per source
            type, each ``mine_depth`` deep).
        miner_model: for ``model`` and ``mixed``, the model directory (or bundled name) whose
            embeddings mine, e.g. an earlier trained retriever: its own mistakes are the hardest
            negatives (ANCE, RocketQA). Empty (default): the model stage 3 starts from.
        mine_depth: candidates mined per question and source type.
        dataset_balance: questions are drawn with P(dataset) ∝ count**dataset_balance
            (1: natural mix, 0: uniform over datasets).
        query_max_seq_length: truncation of instruction + question.
        source_loss_weight: weight of the source-preference term
            (:func:`retriever.training.losses.source_preference`): for a source-specific
            instruction, all units of that source in the batch should outrank the others, not
            only the gold unit. 0 turns it off.
        counterfactual_prob: share of source-specific instructions that name a source type the
            question has *no* gold unit of (e.g. "from infoboxes" on a kb question). Such examples
            carry only the source-preference term (their positive slot holds the best-mined unit of
            that source, used as an in-batch negative for the others), so the model must read the
            instruction instead of guessing the source from the question's style.
        consistency_weight: weight of the phrasing-consistency term
            (:func:`retriever.training.losses.phrasing_consistency`): each example also embeds its
            question behind a second phrasing of the same instruction (the canonical one and
            another, from the sampler's pool, the router grammar's train half included per
            ``grammar_phrasing_prob``), and the other phrasing's score distribution over the batch
            is pulled toward the canonical one's (KL). 0 (default) draws no second phrasing.
        plain_merge_weight: when above 0, stage 3 also trains a *plain* copy from the same
            starting model, with the same seeds and batches but no source-preference term and no
            counterfactual instructions, and the stage's model becomes
            ``(1 - w) * instructed + w * plain`` (:mod:`retriever.training.merge`). The term buys
            instruction following at some cost in general ranking; the merge takes back part of that
            cost. It doubles stage 3's time. 0 (default) trains one model.
    """

    temperature: float = 0.02
    hard_negatives: int = 3
    other_source_share: float = 0.5
    general_instruction_prob: float = 0.3
    canonical_phrasing_prob: float = 0.5
    grammar_phrasing_prob: float = 0.0
    miner: NegativeMiner = NegativeMiner.BM25
    miner_model: str = ""
    mine_depth: int = 20
    dataset_balance: float = 0.5
    query_max_seq_length: int = 64
    source_loss_weight: float = 0.0
    counterfactual_prob: float = 0.0
    consistency_weight: float = 0.0
    plain_merge_weight: float = 0.0

    def validate(self) -> None:
        self.validate_optim("finetune")
        _fraction("finetune", "plain_merge_weight", self.plain_merge_weight)
        _non_negative("finetune", "source_loss_weight", self.source_loss_weight)
        _non_negative("finetune", "consistency_weight", self.consistency_weight)
        _fraction("finetune", "counterfactual_prob", self.counterfactual_prob)
        _temperature("finetune", self.temperature)
        _non_negative("finetune", "hard_negatives", self.hard_negatives)
        for name in ("other_source_share", "general_instruction_prob", "canonical_phrasing_prob",
                     "grammar_phrasing_prob", "dataset_balance"):
            _fraction("finetune", name, getattr(self, name))
        _positive("finetune", "mine_depth", self.mine_depth)
        if self.miner_model and self.miner is NegativeMiner.BM25:
            raise TrainConfigError("[finetune] miner_model is only used with miner = \"model\" or \"mixed\"")
        if self.query_max_seq_length < 8:
            raise TrainConfigError(f"[finetune] query_max_seq_length must be >= 8, got {self.query_max_seq_length}")


@dataclass(frozen=True)
class EvalConfig:
    """A quick in-process dev check on a sample (a proxy; the benchmark runner gives the real figures).

    Attributes:
        enabled: run it after training.
        dev_queries: dev questions (never used for training).
        dev_ids: the dev corpus id list; distractor units are drawn from it.
        questions: dev questions sampled (balanced over datasets).
        distractor_units: units added to the gold units as the candidate set.
        evaluate_base: also evaluate the untrained base model (for comparison).
    """

    enabled: bool = False
    dev_queries: Path | None = None
    dev_ids: Path | None = None
    questions: int = 300
    distractor_units: int = 3000
    evaluate_base: bool = False

    def validate(self) -> None:
        if not self.enabled:
            return
        if self.dev_queries is None or self.dev_ids is None:
            raise TrainConfigError("[evaluation] enabled = true needs dev_queries and dev_ids")
        _exists("evaluation", "dev_queries", self.dev_queries)
        _exists("evaluation", "dev_ids", self.dev_ids)
        _positive("evaluation", "questions", self.questions)
        _non_negative("evaluation", "distractor_units", self.distractor_units)


@dataclass(frozen=True)
class RouterConfig:
    """The model's source router, trained right after the last stage on the final model's embeddings.

    Fitted to the ``train`` split of the instruction grammar and measured on its held-apart
    ``dev`` split (``retriever/training/instruction_pool.py``); see :mod:`retriever.router`.

    Attributes:
        enabled: train it (saved as ``model/router.safetensors``).
        threshold: the confidence at or above which the server filters on the router's reading;
            below it, the encoder decides, with the sources read preferred (the server's
            ``--router-prior``, :data:`retriever.router.ROUTER_PRIOR`). 0.7: with the tuned
            router's defaults it filtered the most dev phrasings right with at most 1 % wrong
            (``benchmarks/RESULTS.md``, "Source router").
        kind: ``tuned`` (default): LoRA adapters on the model's first ``layers`` transformer
            layers (0: all) and a linear head tagging each token (a source name asked for or
            excluded, or neither), ``epochs`` passes (about 10 minutes on 2 CPU cores; on the
            held-apart dev phrasings it read more instructions right and filtered fewer wrong than
            the head, ``benchmarks/RESULTS.md``, "Source router"); ``head``: a small head on the
            frozen embedding (seconds after the embeddings; ``hidden``, ``steps``, ``lr``).
        layers, rank, alpha, epochs, tuned_lr, head_lr: the tuned router's shape and fit.
        hidden: hidden units of the head (0: one logistic layer).
        train_examples, dev_examples: instructions drawn from each split.
        steps, lr, weight_decay: full-batch AdamW.
    """

    enabled: bool = True
    threshold: float = 0.7
    kind: str = "tuned"
    layers: int = 0
    rank: int = 8
    alpha: int = 16
    epochs: int = 2
    tuned_lr: float = 2e-4
    head_lr: float = 1e-3
    hidden: int = 64
    train_examples: int = 6000
    dev_examples: int = 1000
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 1e-2

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise TrainConfigError(f"[router] threshold must be in [0, 1], got {self.threshold}")
        if self.kind not in ("tuned", "head"):
            raise TrainConfigError(f"[router] kind must be 'tuned' or 'head', got {self.kind!r}")
        _non_negative("router", "hidden", self.hidden)
        _non_negative("router", "layers", self.layers)
        for key in ("train_examples", "dev_examples", "steps", "rank", "alpha", "epochs"):
            _positive("router", key, getattr(self, key))
        for key in ("lr", "tuned_lr", "head_lr"):
            if getattr(self, key) <= 0:
                raise TrainConfigError(f"[router] {key} must be > 0, got {getattr(self, key)}")
        if self.weight_decay < 0:
            raise TrainConfigError(f"[router] weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(steps=1))
    align: AlignConfig = field(default_factory=lambda: AlignConfig(steps=1))
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(steps=1))
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    router: RouterConfig = field(default_factory=RouterConfig)

    def validate(self) -> TrainConfig:
        self.run.validate()
        self.model.validate()
        self.data.validate()
        for stage in self.run.stages:
            self.stage(stage).validate()
        self.evaluation.validate()
        self.router.validate()
        return self

    def stage(self, name: StageName) -> PretrainConfig | AlignConfig | FinetuneConfig:
        sections: dict[StageName, PretrainConfig | AlignConfig | FinetuneConfig] = {
            StageName.PRETRAIN: self.pretrain, StageName.ALIGN: self.align, StageName.FINETUNE: self.finetune}
        return sections[name]

    def to_json(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    def fingerprint(self, exclude_run: bool = True) -> str:
        """SHA-256 of :meth:`fingerprinted` (``[run]`` bookkeeping keys excluded by default)."""
        data = self.fingerprinted(exclude_run=exclude_run)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def fingerprinted(self, data: dict[str, Any] | None = None, exclude_run: bool = True) -> dict[str, Any]:
        """The part of a configuration a run is bound to (this one's, or ``data``: a run's saved ``config.json``).

        ``[router]`` is left out: the router is trained after the stages and changes none of them,
        so a run may be resumed with other router settings. A key of :data:`ADDED_KEYS` at its
        default (or absent: a run started before it existed) is left out, so older runs stay
        resumable. With ``exclude_run``, ``[run]`` keeps only ``stages``, ``seed`` and ``precision``.
        """
        data = copy.deepcopy(data) if data is not None else self.to_json()
        data.pop("router", None)
        for section, key in ADDED_KEYS:
            default = {f.name: f.default for f in dataclasses.fields(getattr(self, section))}[key]
            if data.get(section, {}).get(key, default) == default:
                data[section].pop(key, None)
        if exclude_run and "run" in data:
            data["run"] = {k: v for k, v in data["run"].items() if k in ("stages", "seed", "precision")}
        return data


def config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """What ``config`` changes against a run's saved ``config.json``, among the keys the fingerprint covers.

    ``section.key: <run's value> in the run, <value> now``, one a key (:meth:`TrainConfig.fingerprinted`
    of both).
    """
    old_all, new_all = config.fingerprinted(saved), config.fingerprinted()
    out = []
    for section in sorted(set(old_all) | set(new_all)):
        old, new = old_all.get(section) or {}, new_all.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                out.append(f"{section}.{key}: {old.get(key)!r} in the run, {new.get(key)!r} now")
    return out


#: (section, key) pairs added after runs existed: left out of the fingerprint at their default.
ADDED_KEYS = (("data", "lenient"), ("finetune", "grammar_phrasing_prob"), ("finetune", "miner_model"),
              ("data", "link_rows"), ("finetune", "consistency_weight"))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read, type-check and validate a TOML training configuration.

    Args:
        path: the TOML file.
        overrides: values merged over the file, as nested dicts (e.g. ``{"run": {"output_dir": "x"}}``).

    Raises:
        TrainConfigError: the file is unreadable, has unknown keys, wrong types or bad values.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise TrainConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrainConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_dict(_merge(raw, overrides or {}), source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from nested dicts (the TOML structure)."""
    try:
        config = _build(TrainConfig, raw, "")
        for stage in config.run.stages:
            if stage.value not in raw:
                raise TrainConfigError(f"[run] stages lists '{stage.value}' but the file has no [{stage.value}] "
                                       "section with its budget (tokens = N)")
        return config.validate()
    except TrainConfigError as exc:
        raise TrainConfigError(f"{source}: {exc}") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, raw: Any, section: str) -> Any:
    where = f"[{section}]" if section else "the top level"
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{where} must be a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TrainConfigError(f"unknown key '{key}' in {where}{hint}; valid keys: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise TrainConfigError(f"{where} is missing the required key '{f.name}'")
            continue
        child = f"{section}.{f.name}" if section else f.name
        kwargs[f.name] = _convert(hints[f.name], raw[f.name], child)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or value == "":
            if type(None) in args:
                return None
        return _convert(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)  # type: ignore[arg-type]
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            options = ", ".join(repr(m.value) for m in tp)
            raise TrainConfigError(f"{key}: {value!r} is not one of {options}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TrainConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TrainConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise TrainConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise TrainConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{key}: expected a table, got {value!r}")
        return {_convert(args[0], k, key): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    raise TrainConfigError(f"{key}: unsupported type {tp!r}")  # a bug in this module, not in the file


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def _positive(section: str, key: str, value: float) -> None:
    if value <= 0:
        raise TrainConfigError(f"[{section}] {key} must be > 0, got {value}")


def _non_negative(section: str, key: str, value: float) -> None:
    if value < 0:
        raise TrainConfigError(f"[{section}] {key} must be >= 0, got {value}")


def _fraction(section: str, key: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise TrainConfigError(f"[{section}] {key} must be between 0 and 1, got {value}")


def _temperature(section: str, value: float) -> None:
    if not 0 < value <= 10:
        raise TrainConfigError(f"[{section}] temperature must be in (0, 10], got {value} (the paper uses 0.02)")


def _exists(section: str, key: str, path: Path) -> None:
    if not path.exists():
        raise TrainConfigError(f"[{section}] {key}: {path} does not exist (relative paths are resolved "
                               f"against the current directory; run from the project root)")


def _source_weights(section: str, weights: dict[str, float]) -> None:
    for name, weight in weights.items():
        try:
            Source.parse(name)
        except ValueError as exc:
            raise TrainConfigError(f"[{section}] source_weights: {exc}") from None
        _non_negative(section, f"source_weights.{name}", weight)

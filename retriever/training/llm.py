"""The LLM-based variant (UniHGKR-7B style): a decoder-only backbone, last-token pooling, LoRA.

Nothing here is specific to one model family: a local transformers checkpoint (a directory with
``config.json``, ``*.safetensors`` and a tokenizer) becomes a sentence-transformers model with
``Transformer → Pooling(lasttoken) → Normalize`` and LoRA adapters from peft are added for the
duration of a stage and merged into the weights at its end, so every stage output (and the final
model) is a plain sentence-transformers directory that :class:`retriever.encoder.Encoder` loads.

Point a config at a real checkpoint with ``[model] base = "/models/Mistral-7B-v0.1"``,
``pooling = "lasttoken"`` and ``[model.lora] enabled = true`` (``configs/train_llm_gpu.toml``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from retriever.errors import ModelError
from retriever.training.config import LoraConfig, Pooling

logger = logging.getLogger(__name__)


def is_sentence_transformers_dir(path: Path) -> bool:
    return (path / "modules.json").is_file()


def build_from_checkpoint(path: Path, pooling: Pooling, max_seq_length: int, device: str) -> Any:
    """A sentence-transformers model over a plain transformers checkpoint (safetensors only).

    Decoder tokenizers often have no pad token; the eos token is used for padding then
    (padding positions are masked, and last-token pooling reads the last real token).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling as PoolingModule

    if not any(path.glob("*.safetensors")):
        raise ModelError(f"{path}: no *.safetensors weights; pickled checkpoints are refused "
                         "(convert them with safetensors first)")
    try:
        transformer = Transformer(str(path), max_seq_length=max_seq_length,
                                  model_kwargs={"use_safetensors": True, "local_files_only": True},
                                  processor_kwargs={"local_files_only": True},
                                  config_kwargs={"local_files_only": True})
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a transformers checkpoint from {path}: {exc}") from exc
    tokenizer = transformer.tokenizer
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{path}: the tokenizer has neither a pad nor an eos token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    pool = PoolingModule(transformer.get_embedding_dimension(), pooling_mode=pooling.value)
    logger.info("built a %s-pooled embedding model over %s", pooling.value, path)
    return SentenceTransformer(modules=[transformer, pool, Normalize()], device=device)


def apply_lora(transformer_module: Any, settings: LoraConfig) -> None:
    """Wrap the backbone of a sentence-transformers ``Transformer`` module in LoRA adapters.

    Only the adapter weights stay trainable.

    Raises:
        ModelError: none of ``target_modules`` exists in the backbone.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    backbone = transformer_module.model
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    missing = [t for t in settings.target_modules if t not in names]
    if len(missing) == len(settings.target_modules):
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if type(m).__name__ == "Linear"})
        raise ModelError(f"[model.lora] target_modules {list(settings.target_modules)} match no layer of the "
                         f"backbone; its linear layers are named: {', '.join(linear)}")
    targets = [t for t in settings.target_modules if t not in missing]
    peft_config = PeftLoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                 target_modules=targets, bias="none")
    transformer_module.model = get_peft_model(backbone, peft_config)
    trainable = sum(p.numel() for p in transformer_module.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in transformer_module.model.parameters())
    logger.info("LoRA r=%d on %s: %d of %d parameters trainable (%.2f%%)", settings.r,
                ",".join(targets), trainable, total, 100 * trainable / max(total, 1))


def merge_lora(transformer_module: Any) -> None:
    """Merge the adapters into the backbone weights and drop the peft wrapper."""
    from peft import PeftModel

    if isinstance(transformer_module.model, PeftModel):
        transformer_module.model = transformer_module.model.merge_and_unload()
        for parameter in transformer_module.model.parameters():
            parameter.requires_grad_(True)


def has_lora(transformer_module: Any) -> bool:
    from peft import PeftModel

    return isinstance(transformer_module.model, PeftModel)

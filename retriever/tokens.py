"""Counting tokens the way the encoder sees them (window planning, batch budgets)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any

from retriever.instructions import compose_query


def count_with(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens of each text without special tokens.

    Counting is how long texts are cut into windows, so texts longer than the model's maximum are
    expected here: ``verbose=False`` keeps transformers' "Token indices sequence length is longer
    than the specified maximum sequence length" warning out of every build.
    """
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [len(ids) for ids in encoded]


def own_counter(tokenizer: Any) -> Callable[[Sequence[str]], list[int]]:
    """A token counter that owns ``tokenizer`` (nothing else may call it afterwards).

    Counts as :func:`count_with` does. A fast tokenizer's Rust backend is called directly, with
    truncation and padding switched off once: the transformers wrapper's per-call work is about a
    sixth of a short passage's count, and a batch of texts is counted in one call (on every core
    the tokenizers library may use).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda texts: count_with(tokenizer, texts)
    backend.no_truncation()
    backend.no_padding()

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in backend.encode_batch(list(texts), add_special_tokens=False)]

    return count


class QueryTokenCounter:
    """Tokens of ``instruction + question`` as the encoder's forward pass sees them.

    The text is composed as :meth:`Encoder.encode_queries` composes it, counted as :func:`count_with`
    counts (through :func:`own_counter`, without the transformers wrapper's per-call work: every call
    of the server counts its queries here; 54 against 65 us a call for a dev.mini question with the
    default instruction), plus the tokenizer's
    special tokens, and capped at ``max_seq_length`` (longer input is truncated by the encoder
    anyway). It counts with its own copy of the tokenizer behind its own lock: the encoder's
    tokenizer is not safe to call from two threads (sentence-transformers switches its truncation
    and padding on for every forward pass, and counting switches them off), and the encoder's lock
    is held for a whole batch. So the server's handler threads count their queries at admission
    while the worker encodes.
    """

    def __init__(self, tokenizer: Any, max_seq_length: int) -> None:
        self._count = own_counter(copy.deepcopy(tokenizer))
        self._special = int(tokenizer.num_special_tokens_to_add(pair=False))
        self.max_seq_length = max_seq_length
        self._lock = threading.Lock()

    def __call__(self, questions: Sequence[str], instructions: Sequence[str | None]) -> list[int]:
        texts = [compose_query(i, q) for i, q in zip(instructions, questions, strict=True)]
        with self._lock:
            counts = self._count(texts)
        return [min(n + self._special, self.max_seq_length) for n in counts]

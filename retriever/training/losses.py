"""Contrastive loss shared by stages 2 and 3."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, docs: torch.Tensor, temperature: float,
             invalid: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE where query ``i``'s positive is ``docs[i]`` and every other doc is a negative.

    Args:
        queries: ``[B, d]`` L2-normalised.
        docs: ``[N, d]`` L2-normalised, ``N >= B``; rows ``0..B-1`` are the positives, the rest
            (other queries' positives and hard negatives) are negatives.
        temperature: the softmax temperature (0.02 in UniHGKR).
        invalid: optional bool ``[B, N]``; True marks docs that must not count as negatives of a
            query (a duplicate of its positive, another gold unit). The diagonal is never masked.
        rows: optional bool ``[B]``; only these queries are scored (the others' docs still serve
            as negatives). All False gives 0.

    Returns:
        The mean cross-entropy over the (selected) queries (a scalar).
    """
    batch = queries.shape[0]
    scores = queries @ docs.T / temperature  # [B, N]
    if invalid is not None:
        invalid = invalid.clone()
        invalid[torch.arange(batch), torch.arange(batch)] = False
        scores = scores.masked_fill(invalid, float("-inf"))
    labels = torch.arange(batch, device=queries.device)
    if rows is None:
        return F.cross_entropy(scores, labels)
    if not bool(rows.any()):
        return scores.sum() * 0.0
    return F.cross_entropy(scores[rows], labels[rows])


def source_preference(queries: torch.Tensor, docs: torch.Tensor, temperature: float,
                      wanted: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax mass of the requested source's docs: ``-log sum_{wanted} p(doc | query)``.

    The InfoNCE term only orders the gold unit above its negatives; this term orders the other
    units of the requested source above units of other sources, which is what "retrieve from
    tables" asks of the whole top-k. Stage 3 passes each query's own gold unit in ``ignore``:
    left in, the gold alone carries nearly all the wanted mass once InfoNCE has ranked it first,
    and the term stops teaching anything about the rest of the ranking.

    Args:
        queries: ``[B, d]`` L2-normalised.
        docs: ``[N, d]`` L2-normalised.
        temperature: softmax temperature.
        wanted: bool ``[B, N]``; True where doc ``j`` is of the source query ``i`` asked for.
            Rows with no wanted doc, or nothing but wanted docs, are skipped.
        ignore: optional bool ``[B, N]``; docs left out of both sums for that query.

    Returns:
        The mean over the scored rows (0 when none).
    """
    if ignore is None:
        ignore = torch.zeros_like(wanted)
    scores = (queries @ docs.T / temperature).masked_fill(ignore, float("-inf"))  # [B, N]
    wanted = wanted & ~ignore
    rows = wanted.any(dim=1) & (~wanted & ~ignore).any(dim=1)
    if not bool(rows.any()):
        return (queries.sum() + docs.sum()) * 0.0
    scores, wanted = scores[rows], wanted[rows]
    inside = torch.logsumexp(scores.masked_fill(~wanted, float("-inf")), dim=1)
    return (torch.logsumexp(scores, dim=1) - inside).mean()


def phrasing_consistency(teacher: torch.Tensor, student: torch.Tensor, docs: torch.Tensor, temperature: float,
                         invalid: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(p_teacher || p_student)`` between two phrasings' score distributions over the batch.

    Row ``i`` of ``teacher`` and ``student`` embed the same question behind two phrasings of one
    instruction (the canonical one and another); each is softmaxed over ``docs`` at
    ``temperature``, and the student's distribution is pulled toward the teacher's. The teacher
    and the documents are held fixed (detached): an unseen phrasing should rank like the
    canonical one by moving its own embedding, not the canonical one or the documents. The
    paraphrase consistency of Sun et al. (2023), "Evaluating the Zero-shot Robustness of
    Instruction-tuned Language Models", applied to the retriever's ranking.

    Args:
        teacher, student: ``[B, d]`` L2-normalised; ``teacher`` rows may carry gradients (ignored).
        docs: ``[N, d]`` L2-normalised.
        temperature: softmax temperature.
        invalid: optional bool ``[B, N]``; docs left out of both distributions for that row.

    Returns:
        The mean KL over the rows (a scalar, >= 0).
    """
    t = teacher.detach() @ docs.detach().T / temperature  # [B, N]
    s = student @ docs.detach().T / temperature
    if invalid is not None:
        # A large finite fill, not -inf: left-out docs get probability 0 in both, and 0 * (a - b) stays 0.
        t, s = t.masked_fill(invalid, -1e4), s.masked_fill(invalid, -1e4)
    log_t, log_s = F.log_softmax(t, dim=1), F.log_softmax(s, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean()


def key_collisions(row_keys: list[set[str]], col_keys: list[str], device: torch.device | str) -> torch.Tensor:
    """Bool ``[len(row_keys), len(col_keys)]``: True where a column's key is in the row's key set."""
    out = torch.zeros(len(row_keys), len(col_keys), dtype=torch.bool)
    for i, keys in enumerate(row_keys):
        for j, key in enumerate(col_keys):
            if key in keys:
                out[i, j] = True
    return out.to(device)

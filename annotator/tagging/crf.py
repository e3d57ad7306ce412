"""The linear-chain CRF on packed emissions: Viterbi decoding and the forward-backward scores
of span marginals (numpy, for every engine), and the training loss (torch, differentiable).

Inference walks the packed time steps in numpy: both engines hand it their emissions, so the
numpy engine needs no torch and the torch engine decodes with the same code. The loss runs
the forward algorithm in torch, where autograd needs it. ``transitions[to, from]`` as in
Flair's CRF, whose tag dictionary holds `START_TAG` and `STOP_TAG`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from annotator.tagging.packed import GoldLayout, Packing

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

START_TAG = "<START>"
STOP_TAG = "<STOP>"


def viterbi_decode_packed(
    emissions: np.ndarray,
    lengths: np.ndarray,
    transitions: np.ndarray,
    start_index: int,
    stop_index: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Viterbi on packed emissions ``[N, K]`` of sentences of `lengths` (sorted, descending);
    returns packed ``(tags, confidences)``.

    Same arithmetic as Flair's ``CRF.forward`` + ``ViterbiDecoder.decode``: step t takes the
    max over ``from`` of ``(emission[to] + transitions[to, from]) + score[from]``, the first
    step adds ``transitions[:, <START>]``, the end ``transitions[<STOP>, :]``; the confidence
    of a token is ``max(softmax(scores[t]))`` -- the softmax of the *accumulated* max scores at
    that step, not a marginal, and not necessarily of the decoded tag.
    """
    if emissions.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=emissions.dtype)
    packing = Packing.of(lengths)
    sizes, offsets = packing.sizes.tolist(), packing.offsets.tolist()
    scores = np.empty_like(emissions)
    alpha = scores[: sizes[0]] = emissions[: sizes[0]] + transitions[:, start_index]
    pointers = []
    for o, n in zip(offsets[1:], sizes[1:]):
        total = emissions[o : o + n, :, None] + transitions[None] + alpha[:n, None, :]
        pointer = total.argmax(2)
        pointers.append(pointer)
        alpha = scores[o : o + n] = np.take_along_axis(total, pointer[:, :, None], 2)[:, :, 0]
    final = (scores[packing.last_rows] + transitions[stop_index][None]).argmax(1)
    tags = np.empty(emissions.shape[0], dtype=np.int64)
    current = final
    for t in reversed(range(len(sizes))):
        o, n = offsets[t], sizes[t]
        n_next = sizes[t + 1] if t + 1 < len(sizes) else 0
        step_tags = final[:n].copy()
        if n_next:
            step_tags[:n_next] = pointers[t][np.arange(n_next), current[:n_next]]
        tags[o : o + n] = step_tags
        current = step_tags
    shifted = np.exp(scores - scores.max(1, keepdims=True))
    return tags, 1.0 / shifted.sum(1)


def _log_scan(
    emissions: np.ndarray, transitions: np.ndarray, sizes: list[int], first: np.ndarray
) -> np.ndarray:
    """The forward algorithm's log scores ``[N, K]`` of every packed row: the first step adds
    `first`, step t is ``emission[to] + log sum_from exp(transitions[to, from] +
    score[from])`` for the first ``sizes[t]`` sentences -- as a matrix product of the scores,
    shifted by their row's max, with ``exp(transitions)``."""
    growth = np.exp(transitions).T  # [from, to]
    scores = np.empty_like(emissions)
    alpha = scores[: sizes[0]] = emissions[: sizes[0]] + first
    offset = sizes[0]
    with np.errstate(divide="ignore"):  # a tag no path reaches (<START>) scores -inf
        for n in sizes[1:]:
            top = alpha[:n].max(1, keepdims=True)
            summed = np.exp(alpha[:n] - top) @ growth
            alpha = scores[offset : offset + n] = emissions[offset : offset + n] + (
                np.log(summed) + top
            )
            offset += n
    return scores


def forward_backward_packed(
    emissions: np.ndarray,
    lengths: np.ndarray,
    transitions: np.ndarray,
    start_index: int,
    stop_index: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log forward and backward scores ``[N, K]`` on packed emissions of sentences of `lengths`
    (sorted, descending), and each sentence's log partition ``[B]``.

    ``alpha[p, k]``: log-sum of all prefixes ending in tag k at packed row p (its emission
    included); ``beta[p, k]``: log-sum of all continuations after it (the <STOP> transition
    included). The backward pass is the forward one over each sentence reversed, with
    transposed transitions, starting from ``transitions[<STOP>, :]``: it yields
    ``beta + emission``.
    """
    if emissions.shape[0] == 0:
        empty = np.zeros((0, emissions.shape[1]), dtype=emissions.dtype)
        return empty, empty, np.zeros(0, dtype=emissions.dtype)
    lengths = np.asarray(lengths, dtype=np.int64)
    packing = Packing.of(lengths)
    sizes = packing.sizes.tolist()
    alpha = _log_scan(emissions, transitions, sizes, transitions[:, start_index])
    # the packed row of the same token counted from its sentence's end (an involution)
    mirror = packing.offsets[lengths[packing.sentence] - 1 - packing.step] + packing.sentence
    reverse = _log_scan(emissions[mirror], transitions.T, sizes, transitions[stop_index])
    beta = reverse[mirror] - emissions
    final = alpha[packing.last_rows] + transitions[stop_index][None]
    top = final.max(1)
    log_z = top + np.log(np.exp(final - top[:, None]).sum(1))
    return alpha, beta, log_z


def crf_loss_packed(
    emissions: torch.Tensor,
    transitions: torch.Tensor,
    layout: GoldLayout,
    start_index: int,
    stop_index: int,
) -> torch.Tensor:
    """Flair's ``ViterbiLoss`` on packed emissions ``[N, K]``: the batch's summed negative
    log-likelihood, the forward algorithm's log partition minus the gold path's score.

    The gold score adds ``emission[y_t]``, ``transitions[y_t, y_{t-1}]`` (``y_{-1}`` = <START>)
    and ``transitions[<STOP>, y_last]``. Per-step views are cut by one ``torch.split`` and
    joined by one ``torch.cat``: one backward node each.
    """
    import torch

    gold = layout.gold
    gold_score = (
        emissions.gather(1, gold.unsqueeze(1)).sum()
        + transitions[gold, layout.gold_prev].sum()
        + transitions[stop_index, gold[layout.last_rows]].sum()
    )
    steps = torch.split(emissions, layout.sizes)
    alpha = steps[0] + transitions[:, start_index].unsqueeze(0)
    scores = [alpha]
    for step in steps[1:]:
        total = step.unsqueeze(2) + transitions.unsqueeze(0) + alpha[: step.size(0)].unsqueeze(1)
        alpha = torch.logsumexp(total, dim=2)
        scores.append(alpha)
    final = torch.cat(scores)[layout.last_rows] + transitions[stop_index].unsqueeze(0)
    return torch.logsumexp(final, dim=1).sum() - gold_score

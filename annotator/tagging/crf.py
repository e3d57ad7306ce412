"""The linear-chain CRF on packed emissions: Viterbi decoding, the training loss and the
forward-backward scores of span marginals.

All walk one recursion over the packed time steps (`_scan`): with `max` it is Viterbi, with
`logsumexp` the forward algorithm of the loss; over each sentence reversed, with the
transitions transposed, it is the backward algorithm. ``transitions[to, from]`` as in Flair's
CRF, whose tag dictionary holds `START_TAG` and `STOP_TAG`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from annotator.tagging.packed import GoldLayout, Packing

START_TAG = "<START>"
STOP_TAG = "<STOP>"


def _scan(
    emissions: torch.Tensor,
    transitions: torch.Tensor,
    sizes: list[int],
    first: torch.Tensor,
    best: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Scores ``[N, K]`` of every packed row, and (with `best`) each step's back-pointers.

    The first step adds `first` (``[K]``: ``transitions[:, <START>]`` for the forward
    direction); step t combines
    ``(emission[to] + transitions[to, from]) + score[from]`` over ``from`` -- by max (Viterbi)
    or logsumexp (the forward algorithm) -- for the first ``sizes[t]`` sentences. Per-step views
    are cut by one ``torch.split`` and joined by one ``torch.cat``: one backward node each.
    """
    steps = torch.split(emissions, sizes)
    alpha = steps[0] + first.unsqueeze(0)
    scores, pointers = [alpha], []
    for step in steps[1:]:
        total = step.unsqueeze(2) + transitions.unsqueeze(0) + alpha[: step.size(0)].unsqueeze(1)
        if best:
            alpha, pointer = torch.max(total, dim=2)
            pointers.append(pointer)
        else:
            alpha = torch.logsumexp(total, dim=2)
        scores.append(alpha)
    return torch.cat(scores), pointers


def viterbi_decode_packed(
    emissions: torch.Tensor,
    lengths: np.ndarray,
    transitions: torch.Tensor,
    start_index: int,
    stop_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Viterbi on packed emissions ``[N, K]`` of sentences of `lengths` (sorted, descending);
    returns packed ``(tags, confidences)``.

    Same arithmetic as Flair's ``CRF.forward`` + ``ViterbiDecoder.decode``; the end adds
    ``transitions[<STOP>, :]``, and the confidence of a token is ``max(softmax(scores[t]))`` --
    the softmax of the *accumulated* max scores at that step, not a marginal, and not
    necessarily of the decoded tag.
    """
    if emissions.size(0) == 0:
        return emissions.new_zeros(0, dtype=torch.long), emissions.new_zeros(0)
    packing = Packing.of(lengths)
    sizes, offsets = packing.sizes.tolist(), packing.offsets.tolist()
    scores, pointers = _scan(emissions, transitions, sizes, transitions[:, start_index], best=True)
    last_rows = torch.from_numpy(packing.last_rows).to(emissions.device)
    final = torch.max(scores[last_rows] + transitions[stop_index].unsqueeze(0), dim=1)[1]
    tags = torch.empty(emissions.size(0), dtype=torch.long, device=emissions.device)
    current = final
    for t in reversed(range(len(sizes))):
        o, n = offsets[t], sizes[t]
        n_next = sizes[t + 1] if t + 1 < len(sizes) else 0
        step_tags = final[:n].clone()
        if n_next:
            step_tags[:n_next] = pointers[t].gather(1, current[:n_next].unsqueeze(1)).squeeze(1)
        tags[o : o + n] = step_tags
        current = step_tags
    return tags, F.softmax(scores, dim=1).max(dim=1).values


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
    and ``transitions[<STOP>, y_last]``.
    """
    gold = layout.gold
    gold_score = (
        emissions.gather(1, gold.unsqueeze(1)).sum()
        + transitions[gold, layout.gold_prev].sum()
        + transitions[stop_index, gold[layout.last_rows]].sum()
    )
    scores, _ = _scan(emissions, transitions, layout.sizes, transitions[:, start_index], best=False)
    final = scores[layout.last_rows] + transitions[stop_index].unsqueeze(0)
    return torch.logsumexp(final, dim=1).sum() - gold_score


def forward_backward_packed(
    emissions: torch.Tensor,
    lengths: np.ndarray,
    transitions: torch.Tensor,
    start_index: int,
    stop_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log forward and backward scores ``[N, K]`` on packed emissions of sentences of `lengths`
    (sorted, descending), and each sentence's log partition ``[B]``.

    ``alpha[p, k]``: log-sum of all prefixes ending in tag k at packed row p (its emission
    included); ``beta[p, k]``: log-sum of all continuations after it (the <STOP> transition
    included). The backward pass is `_scan` over each sentence reversed, with transposed
    transitions, starting from ``transitions[<STOP>, :]``: it yields ``beta + emission``.
    """
    if emissions.size(0) == 0:
        empty = emissions.new_zeros(0, emissions.size(1))
        return empty, empty, emissions.new_zeros(0)
    lengths = np.asarray(lengths, dtype=np.int64)
    packing = Packing.of(lengths)
    sizes = packing.sizes.tolist()
    alpha, _ = _scan(emissions, transitions, sizes, transitions[:, start_index], best=False)
    # the packed row of the same token counted from its sentence's end (an involution)
    mirrored = packing.offsets[lengths[packing.sentence] - 1 - packing.step] + packing.sentence
    mirror = torch.from_numpy(mirrored).to(emissions.device)
    reverse, _ = _scan(
        emissions[mirror], transitions.t(), sizes, transitions[stop_index], best=False
    )
    beta = reverse[mirror] - emissions
    last_rows = torch.from_numpy(packing.last_rows).to(emissions.device)
    log_z = torch.logsumexp(alpha[last_rows] + transitions[stop_index].unsqueeze(0), dim=1)
    return alpha, beta, log_z

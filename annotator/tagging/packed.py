"""The packed (time-major) token layout that the engines and the fast trainer share.

Sentences of a batch are sorted by length, descending; at time step t the first
`sizes[t]` of them still run. Tokens exist in two orders: *flat* (sentence after sentence)
and *packed* (time-major, the layout of `PackedSequence.data`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only; the numpy engine runs without torch
    import torch
    from torch import nn


@dataclass
class Packing:
    """Where each token of a batch sits in the packed order (numpy, on the CPU)."""

    sizes: np.ndarray  # [steps] sentences still running at each time step
    offsets: np.ndarray  # [steps] first packed row of each step
    packed_to_flat: np.ndarray  # [N] flat index of each packed row
    step: np.ndarray  # [N] time step of each packed row
    sentence: np.ndarray  # [N] sentence of each packed row
    last_rows: np.ndarray  # [B] packed row of each sentence's last token

    @classmethod
    def of(cls, lengths: np.ndarray) -> Packing:
        """The packing of sentences of `lengths` (non-empty, sorted by length, descending)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        sizes = (lengths[None, :] > np.arange(int(lengths[0]))[:, None]).sum(1)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        step = np.repeat(np.arange(sizes.size), sizes)
        sentence = np.arange(step.size) - offsets[step]
        return cls(
            sizes=sizes,
            offsets=offsets,
            packed_to_flat=starts[sentence] + step,
            step=step,
            sentence=sentence,
            last_rows=offsets[lengths - 1] + np.arange(lengths.size),
        )

    @property
    def flat_to_packed(self) -> np.ndarray:
        inverse = np.empty_like(self.packed_to_flat)
        inverse[self.packed_to_flat] = np.arange(self.packed_to_flat.size)
        return inverse


def token_chunks(order: np.ndarray, lengths: np.ndarray, max_tokens: int) -> Iterator[np.ndarray]:
    """Consecutive chunks of `order` (sentence ids sorted by length, descending) of at most
    `max_tokens` padded tokens each (at least one sentence)."""
    begin = 0
    while begin < len(order):
        count = max(1, max_tokens // int(lengths[order[begin]]))
        yield order[begin : begin + count]
        begin += count


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Runs a block with every submodule in eval mode and restores the exact previous flags.

    Flair's predict does not call ``eval()``; a tagger left in train mode would apply dropout
    there. We always predict deterministically and leave the flags as they were.
    """
    if not any(m.training for m in module.modules()):
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


@dataclass
class PreparedBatch:
    """Index tensors for one batch of non-empty sentences, sorted by length (descending).

    ``packed_to_flat[p]`` is the flat index of packed row ``p`` and ``flat_to_packed`` its
    inverse.
    """

    lengths: list[int]
    batch_sizes: torch.Tensor  # int64, CPU (PackedSequence requirement)
    packed_to_flat: torch.Tensor  # int64, on device
    flat_to_packed: torch.Tensor  # int64, on device
    packed_sentence_index: torch.Tensor  # int64, on device: sentence of each packed row
    component_inputs: list[dict[str, Any] | None] = field(default_factory=list)
    # per token (flat order), a key equal for tokens whose embeddings are equal (same word type
    # and inputs); None where they are contextual or not all prepared here
    row_keys: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.packed_to_flat.numel())


@dataclass
class GoldLayout:
    """A batch's gold tags in packed order, for the CRF loss."""

    sizes: list[int]  # sentences still running at each time step
    gold: torch.Tensor  # [N] gold tag ids, packed order
    gold_prev: torch.Tensor  # [N] gold tag of the previous token (<START> at step 0)
    last_rows: torch.Tensor  # [B] packed row of each sentence's last token
    num_tokens: int

    @classmethod
    def of(
        cls, lengths: np.ndarray, gold_flat: np.ndarray, start_index: int, device: torch.device
    ) -> GoldLayout:
        """Gold tags of a batch (flat order, sentences sorted by length, descending)."""
        packing = Packing.of(lengths)
        gold = gold_flat[packing.packed_to_flat]
        step = packing.step
        prev_rows = np.where(
            step > 0, packing.offsets[np.maximum(step - 1, 0)] + packing.sentence, 0
        )
        gold_prev = np.where(step > 0, gold[prev_rows], start_index)
        import torch

        def as_tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)

        return cls(
            sizes=packing.sizes.tolist(),
            gold=as_tensor(gold),
            gold_prev=as_tensor(gold_prev),
            last_rows=as_tensor(packing.last_rows),
            num_tokens=int(gold.size),
        )

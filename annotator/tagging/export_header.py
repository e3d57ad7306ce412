"""The export's description, read from its safetensors header alone: no torch, no weights;
and what both engines build from it without torch (vocabularies, the export's errors).

A safetensors file starts with the length of its JSON header (8 bytes, little-endian), then the
header, whose `__metadata__` holds the description (`annotator.tagging.export`). Reading it
this way lets `annotate` learn a model's sentence rules and start its splitter before torch
has even loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the safetensors header key holding the description
META_KEY = "annotator_export"
FORMAT_VERSION = 1
#: a header larger than this is no export of ours (safetensors' own limit is 100 MB)
MAX_HEADER_BYTES = 100_000_000


def read_description(path: str | Path) -> dict[str, Any] | None:
    """The export's description; None where the file is no annotator export."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size <= MAX_HEADER_BYTES:
            return None
        try:
            header = json.loads(handle.read(size))
        except ValueError:
            return None
    text = (header.get("__metadata__") or {}).get(META_KEY) if isinstance(header, dict) else None
    return json.loads(text) if text else None


DICTIONARY = "__dictionary__"


class ExportError(Exception):
    """The model holds something the export cannot say as JSON (it stays a `.pt`)."""


class Vocabulary:
    """Flair's `Dictionary` as far as inference reads it: items, their ids, the <unk> rule."""

    def __init__(self, items: list[str], add_unk: bool = True) -> None:
        self.items = list(items)
        self.item2idx = {item: index for index, item in enumerate(self.items)}
        self.add_unk = add_unk

    def get_items(self) -> list[str]:
        return list(self.items)

    def get_idx_for_item(self, item: str) -> int:
        """The item's id; unknown: 0 with an <unk>, else IndexError (Flair's rule)."""
        index = self.item2idx.get(item)
        if index is not None:
            return index
        if self.add_unk:
            return 0
        raise IndexError(f"{item!r} is not in the dictionary and it has no <unk>")

    def has_item(self, item: str) -> bool:
        return item in self.item2idx

    def __len__(self) -> int:
        return len(self.items)


def vocabulary_of(value: dict[str, Any]) -> Vocabulary:
    return Vocabulary(value[DICTIONARY], value["add_unk"])


def tagger_model(description: dict[str, Any]) -> dict[str, Any]:
    """The description's SequenceTagger, as far as both engines run it (else ExportError)."""
    model = description["model"]
    if model.get("__cls__") != "SequenceTagger":
        raise ExportError(f"a {model.get('__cls__')}, not a SequenceTagger")
    if model.get("train_initial_hidden_state"):
        raise ExportError("a trained initial RNN state")
    return model


def leaf_descriptions(model: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Each leaf embedding's parameters and the prefix of its tensors' names."""
    embeddings = model["embeddings"]
    if embeddings.get("__cls__") == "StackedEmbeddings":
        leaves = [
            (params, f"embeddings.list_embedding_{number}.")
            for number, params in enumerate(embeddings["embeddings"])
        ]
    else:
        leaves = [(embeddings, "embeddings.")]
    if any(params.get("__cls__") == "StackedEmbeddings" for params, _ in leaves):
        raise ExportError("nested stacked embeddings")
    return leaves


def predicts_spans(tags: list[str]) -> bool:
    """A BIO/BIOES tag dictionary: the tagger predicts spans, not token labels (Flair's rule)."""
    return any(tag.startswith(("B-", "S-", "I-")) for tag in tags)

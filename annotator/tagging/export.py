"""A Flair tagger as flat data: its weights in safetensors, its description as JSON.

A Flair `.pt` is a pickle: loading one needs Flair's classes (`import flair` is most of a
short job's start) and can run any code the file holds. The export is the same content
without either: the `.pt`'s state dict as safetensors tensors, and everything else the `.pt`
holds (the embeddings' parameters, the tag dictionary, the model card) as JSON in the
safetensors header, where Flair's `Dictionary` objects become plain item lists. Nothing is
dropped, so a Flair tagger can be rebuilt from it (`flair_tagger`), and the fast engine runs
it without Flair (`FlatTagger`) where it knows every part.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from annotator.files import sha256_file
from annotator.tagging.components import (
    CharComponent,
    Component,
    FlairComponent,
    IndexComponent,
    SharedVectorComponent,
    word_index,
)
from annotator.tagging.export_header import (
    DICTIONARY,
    FORMAT_VERSION,
    META_KEY,
    ExportError,
    Vocabulary,
    leaf_descriptions,
    predicts_spans,
    read_description,
    tagger_model,
    vocabulary_of,
)
from annotator.vectors import VectorLookup

__all__ = ["ExportError", "Vocabulary", "flat_tagger", "flair_tagger", "read_export"]

# ---------------------------------------------------------------------------- writing


def _to_json(value: Any, where: str = "model") -> Any:
    """The `.pt`'s non-tensor content as JSON values; Flair Dictionaries as item lists."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ExportError(f"{where}: a mapping with non-string keys")
        return {key: _to_json(item, f"{where}.{key}") for key, item in value.items()}
    if type(value).__name__ == "Dictionary" and hasattr(value, "idx2item"):
        try:
            items = [item.decode("utf-8") for item in value.idx2item]
        except (AttributeError, UnicodeDecodeError):
            raise ExportError(f"{where}: a dictionary of items that are not UTF-8 text") from None
        return {
            DICTIONARY: items,
            "add_unk": bool(value.add_unk),
            "multi_label": bool(getattr(value, "multi_label", False)),
            "span_labels": bool(getattr(value, "span_labels", False)),
        }
    raise ExportError(f"{where}: a {type(value).__name__}, which the export cannot hold")


def write_export(model_file: str | Path, target: str | Path, sha256: str | None = None) -> Path:
    """Export the Flair `.pt` `model_file` to `target` (written whole, then renamed into place).
    Unpickles the `.pt`: Flair is imported, and the file's code runs, as any Flair load would."""
    from flair.file_utils import load_torch_state
    from safetensors.torch import save_file

    import annotator.embeddings  # noqa: F401  (its embeddings' classes, for the unpickling)

    state = load_torch_state(str(model_file))
    weights = state.pop("state_dict")
    if not isinstance(weights, dict) or not all(
        isinstance(t, torch.Tensor) for t in weights.values()
    ):
        raise ExportError("the model's state_dict is not a mapping of tensors")
    description = {
        "version": FORMAT_VERSION,
        "source_sha256": sha256 or sha256_file(model_file),
        "model": _to_json(state),
    }
    # safetensors stores each tensor on its own: no shared or strided storage
    tensors = {name: tensor.detach().contiguous().clone() for name, tensor in weights.items()}
    target = Path(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # as an ordinary new file: mkstemp's is private
    try:
        save_file(tensors, temporary, metadata={META_KEY: json.dumps(description)})
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------------------- reading


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(description, tensors) of an export; ExportError if it is none."""
    from safetensors.torch import load_file

    description = read_description(path)
    if description is None or description.get("version") != FORMAT_VERSION:
        raise ExportError(f"{path}: not a model exported by annotator (format {FORMAT_VERSION})")
    return description, load_file(str(path))


def flair_tagger(description: dict[str, Any], tensors: dict[str, torch.Tensor]):
    """The Flair SequenceTagger the export was made from (for Flair's predict, evaluation and
    training): its `.pt` content rebuilt, then loaded as Flair loads a `.pt`."""
    from flair.data import Dictionary
    from flair.models import SequenceTagger

    import annotator.embeddings  # noqa: F401  (registers our embeddings with Flair's loader)

    def rebuild(value: Any) -> Any:
        if isinstance(value, list):
            return [rebuild(item) for item in value]
        if isinstance(value, dict) and DICTIONARY in value:
            dictionary = Dictionary(add_unk=False)
            for item in value[DICTIONARY]:
                dictionary.add_item(item)
            dictionary.add_unk = value["add_unk"]
            dictionary.multi_label = value["multi_label"]
            dictionary.span_labels = value["span_labels"]
            return dictionary
        if isinstance(value, dict):
            return {key: rebuild(item) for key, item in value.items()}
        return value

    state = rebuild(description["model"])
    state["state_dict"] = dict(tensors)
    return SequenceTagger.load(state)


def _embedding(weight: torch.Tensor) -> nn.Embedding:
    return nn.Embedding(weight.size(0), weight.size(1))


def _layer_norm(params: dict[str, Any], prefix: str, tensors: dict) -> nn.Module | None:
    if not params.get("stable") or f"{prefix}layer_norm.weight" not in tensors:
        return None
    return nn.LayerNorm(tensors[f"{prefix}layer_norm.weight"].numel())


class _LanguageModel(nn.Module):
    """The parts of Flair's LanguageModel a FlairEmbeddings reads (no decoder)."""

    def __init__(self, params: dict[str, Any], dictionary_size: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(dictionary_size, params["embedding_size"])
        self.rnn = nn.LSTM(params["embedding_size"], params["hidden_size"], params["nlayers"])
        self.proj = nn.Linear(params["hidden_size"], params["nout"]) if params.get("nout") else None


def _leaf(params: dict[str, Any], prefix: str, tensors: dict) -> tuple[nn.Module, Component]:
    """The modules (to register) and fast-engine component of one leaf embedding."""
    kind = params.get("__cls__")
    if kind == "WordEmbeddings" and params.get("field") is None:
        table = _embedding(tensors[f"{prefix}embedding.weight"])
        norm = _layer_norm(params, prefix, tensors)
        component = IndexComponent(
            params["name"],
            params["embedding_length"],
            table,
            norm,
            lambda word, vocab=params["vocab"]: word_index(vocab, word),
        )
        return nn.ModuleDict({"embedding": table, **({"layer_norm": norm} if norm else {})}), (
            component
        )
    if kind == "OneHotEmbeddings" and params.get("field", "text") == "text":
        table = _embedding(tensors[f"{prefix}embedding_layer.weight"])
        norm = _layer_norm(params, prefix, tensors)
        vocabulary = vocabulary_of(params["vocab_dictionary"])
        modules = {"embedding_layer": table, **({"layer_norm": norm} if norm else {})}
        # Flair names a one-hot embedding by its field
        name = params.get("name") or f"one-hot-{params.get('field', 'text')}"
        component = IndexComponent(
            name, params["embedding_length"], table, norm, vocabulary.get_idx_for_item
        )
        return nn.ModuleDict(modules), component
    if kind == "CharacterEmbeddings":
        dictionary = vocabulary_of(params["path_to_char_dict"])
        embedding = nn.Embedding(len(dictionary), params["char_embedding_dim"])
        rnn = nn.LSTM(
            params["char_embedding_dim"],
            params["hidden_size_char"],
            num_layers=1,
            bidirectional=True,
        )
        component = CharComponent(
            params["name"], 2 * params["hidden_size_char"], dictionary, embedding, rnn
        )
        return nn.ModuleDict({"char_embedding": embedding, "char_rnn": rnn}), component
    if kind == "SharedVectorEmbeddings":
        table = SharedVectors(tuple(params["size"]), tuple(params["table"]), tensors, prefix)
        return table, SharedVectorComponent(params["name"], params["size"][1], table)
    if kind == "FlairEmbeddings" and params.get("tokenized_lm", True):
        lm_params = params["model_params"]
        dictionary = vocabulary_of(lm_params["dictionary"])
        lm = _LanguageModel(lm_params, len(dictionary))
        hidden = lm_params.get("nout") or lm_params["hidden_size"]
        component = FlairComponent(
            params["name"],
            hidden,
            lm,
            dictionary.item2idx,
            bool(lm_params["is_forward_lm"]),
            bool(params.get("with_whitespace", True)),
            bool(params.get("is_lower", False)),
            bool(params.get("fine_tune", False)),
            lm_params.get("document_delimiter", "\n"),
        )
        return nn.ModuleDict({"lm": lm}), component
    raise ExportError(f"the fast engine does not run {kind} embeddings")


class SharedVectors(VectorLookup, nn.Module):
    """annotator's SharedVectorEmbeddings without Flair: the same buffers, the same lookups."""

    def __init__(self, size: tuple[int, int], table: tuple[int, int], tensors, prefix) -> None:
        super().__init__()
        for name in ("codes", "scales", "word_bytes", "word_rows"):
            self.register_buffer(name, tensors[f"{prefix}{name}"])
        self._index = None


class _CRF(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.transitions = nn.Parameter(torch.zeros(size, size))


class FlatTagger(nn.Module):
    """A Flair SequenceTagger's inference parts, built from an export without Flair: what the
    fast engine reads of a tagger (`linear`, `rnn`, `embedding2nn`, `crf.transitions`, the tag
    dictionary, the model card), with its embeddings as the engine's components.

    Floating-point weights become float32, as Flair's `load_state_dict` copies them."""

    flat = True  # the fast engine's components come ready-made (`components`)

    def __init__(self, description: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        model = tagger_model(description)
        tensors = {
            name: tensor.float() if tensor.is_floating_point() else tensor
            for name, tensor in tensors.items()
        }
        self.label_dictionary = vocabulary_of(model["tag_dictionary"])
        self.tag_type = model["tag_type"]
        self.model_card = model.get("model_card")
        self.use_crf = bool(model["use_crf"])
        self.use_rnn = bool(model["use_rnn"])
        self.reproject_embeddings = bool(model.get("reproject_embeddings", True))
        self.predict_spans = predicts_spans(self.label_dictionary.get_items())
        leaves = leaf_descriptions(model)
        built = [_leaf(params, prefix, tensors) for params, prefix in leaves]
        self.parts = nn.ModuleList([modules for modules, _ in built])
        # Flair concatenates token embeddings in sorted name order
        self.components = sorted((component for _, component in built), key=lambda c: c.name)
        if len({c.name for c in self.components}) != len(self.components):
            raise ExportError("embeddings with duplicate names")
        width = sum(component.length for component in self.components)

        if self.reproject_embeddings:
            weight = tensors["embedding2nn.weight"]
            self.embedding2nn = nn.Linear(weight.size(1), weight.size(0))
            width = weight.size(0)
        if self.use_rnn:
            rnn_type = model.get("rnn_type", "LSTM")
            if rnn_type not in ("LSTM", "GRU", "RNN"):
                raise ExportError(f"RNN type {rnn_type}")
            layers = int(model["rnn_layers"])
            self.rnn = getattr(nn, rnn_type)(
                width,
                int(model["hidden_size"]),
                num_layers=layers,
                dropout=0.0 if layers == 1 else 0.5,
                bidirectional="rnn.weight_ih_l0_reverse" in tensors,
                batch_first=True,
            )
        weight = tensors["linear.weight"]
        self.linear = nn.Linear(weight.size(1), weight.size(0))
        if self.use_crf:
            self.crf = _CRF(len(self.label_dictionary))
        # modules of the parts are registered under parts.N.*; the export names them as Flair
        renamed = {}
        for number, (_, prefix) in enumerate(leaves):
            for name, tensor in tensors.items():
                if name.startswith(prefix):
                    renamed[f"parts.{number}.{name[len(prefix) :]}"] = tensor
        head = {n: t for n, t in tensors.items() if not n.startswith("embeddings.")}
        if "transitions" in head:  # older Flair models kept the CRF's transitions here
            head["crf.transitions"] = head.pop("transitions")
        missing, unexpected = self.load_state_dict({**renamed, **head}, strict=False)
        unexpected = [n for n in unexpected if ".lm.decoder." not in n]  # the LM's decoder
        if missing or unexpected:
            raise ExportError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
        self.eval()

    @property
    def label_type(self) -> str:
        return self.tag_type


def flat_tagger(path: str | Path) -> FlatTagger:
    """The export at `path` as a FlatTagger (ExportError: not an export, or not covered)."""
    return FlatTagger(*read_export(path))

"""Character language models (Flair's FlairEmbeddings) in the fast engine, against Flair's own
FlairEmbeddings on a small LanguageModel trained here: the same embeddings to 1e-5, the same
spans, from a Flair tagger and from its Flair-free export."""

from __future__ import annotations

import random

import pytest
import torch

flair = pytest.importorskip("flair")

from flair.data import Dictionary, Sentence  # noqa: E402
from flair.embeddings import FlairEmbeddings  # noqa: E402
from flair.models import LanguageModel, SequenceTagger  # noqa: E402

import annotator.models as models  # noqa: E402
from annotator.tagging.components import FlairComponent  # noqa: E402
from annotator.tagging.engines import make_engine  # noqa: E402
from annotator.tagging.export import FlatTagger  # noqa: E402
from annotator.tagging.fast import FastSequenceTagger  # noqa: E402
from tests.test_fast_tagger import (  # noqa: E402
    _sentences,
    _tagger,
    _word_embeddings,
    assert_same,
    flair_predictions,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TEXT = (
    "John Smith said the company in Berlin would open an office in Paris . "
    "Mary visited the museum on Monday and said it was worth it . "
    "The 2019 report of Acme Corp. shows 3.14 percent growth in Zurich . "
) * 4


def _trained_lm(forward: bool) -> LanguageModel:
    """A tiny LSTM character LM, trained for a few steps on TEXT (real, non-random weights)."""
    torch.manual_seed(1 if forward else 2)
    chars = Dictionary(add_unk=True)
    for char in "\n " + TEXT:
        chars.add_item(char)
    lm = LanguageModel(chars, is_forward_lm=forward, hidden_size=24, nlayers=1, embedding_size=8)
    text = TEXT if forward else TEXT[::-1]
    ids = torch.tensor([chars.get_idx_for_item(c) for c in text])
    width = 40
    columns = ids[: (ids.numel() // width) * width].view(-1, width).t()  # [chars, batch]
    optimiser = torch.optim.Adam(lm.parameters(), lr=0.02)
    lm.train()
    first = None
    for _ in range(50):
        decoded, _, _ = lm(columns[:-1], lm.init_hidden(columns.size(1)))
        loss = torch.nn.functional.cross_entropy(
            decoded.reshape(-1, len(chars)), columns[1:].reshape(-1)
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.75 * first  # it learned something: these are trained weights
    return lm.eval()


@pytest.fixture(scope="module")
def lm_tagger():
    embeddings = [
        FlairEmbeddings(_trained_lm(True)),
        FlairEmbeddings(_trained_lm(False), with_whitespace=False, is_lower=True),
        _word_embeddings(),
    ]
    return _tagger(embeddings)


def _with_repeats(n: int, seed: int) -> list[list[str]]:
    """Sentences of mixed lengths, some repeated exactly (boilerplate) and some odd."""
    sentences = _sentences(n, seed=seed)
    rng = random.Random(seed)
    return sentences + [list(rng.choice(sentences)) for _ in range(n // 3)]


def test_char_lm_embeddings_equal_flairs(lm_tagger):
    """Each token's character-LM embeddings, computed over distinct texts packed by length
    (in groups small enough to need several), equal Flair's FlairEmbeddings to 1e-5."""
    sentences = sorted(_with_repeats(40, seed=7), key=len, reverse=True)
    flair_sentences = [Sentence(s) for s in sentences]
    with torch.no_grad():
        lm_tagger.embeddings.embed(flair_sentences)
    names = sorted(lm_tagger.embeddings.get_names())
    flair_vectors = torch.cat(
        [
            torch.stack([token.get_embedding(names) for token in sentence])
            for sentence in flair_sentences
        ]
    )
    fast = FastSequenceTagger(lm_tagger)
    for component in fast.components:
        if isinstance(component, FlairComponent):
            component.max_lm_floats = 24 * 200  # several groups of texts per batch
    with torch.inference_mode():
        batch = fast.prepare(sentences)
        runs = [inputs for inputs in batch.component_inputs if inputs and "runs" in inputs]
        assert runs and all(len(inputs["runs"]) > 1 for inputs in runs)
        ours = fast.embed_flat(batch)
    assert ours.shape == flair_vectors.shape
    assert torch.allclose(ours, flair_vectors, atol=1e-5, rtol=0)


def test_char_lm_tagger_spans_equal_flairs_also_from_its_export(lm_tagger, tmp_path):
    sentences = _with_repeats(60, seed=8)
    expected = flair_predictions(lm_tagger, sentences)
    assert sum(map(len, expected)) > 0
    assert_same(expected, make_engine(lm_tagger, device="cpu").predict(sentences))

    # the export gives what its .pt gives (Flair's .pt forgets `with_whitespace`: the loaded
    # tagger reads the backward LM at the whitespace, as Flair's own load does)
    path = tmp_path / "lm-tagger.pt"
    lm_tagger.save(path)
    loaded = flair_predictions(SequenceTagger.load(path), sentences)
    flat = models.load_model(path, device="cpu")
    assert isinstance(flat, FlatTagger)  # the character LMs run without Flair
    assert_same(loaded, make_engine(flat, device="cpu").predict(sentences))

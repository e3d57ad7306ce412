"""The numpy engine: the torch fast engine's spans and scores without importing torch, and
the rule that picks it."""

from __future__ import annotations

import subprocess
import sys

import pytest

flair = pytest.importorskip("flair")

from flair.embeddings import CharacterEmbeddings  # noqa: E402

import annotator.models as models  # noqa: E402
from annotator.bench.docs import read_conll_documents  # noqa: E402
from annotator.errors import ModelError, UsageError  # noqa: E402
from annotator.models import numpy_engine_wanted  # noqa: E402
from annotator.tagging.engines import make_engine  # noqa: E402
from annotator.tagging.export import FlatTagger, flat_tagger  # noqa: E402
from annotator.tagging.numpy_engine import NumpyTagger, numpy_tagger  # noqa: E402
from tests.test_fast_tagger import (  # noqa: E402
    _char_dictionary,
    _one_hot,
    _sentences,
    _tagger,
    _word_embeddings,
)

pytestmark = pytest.mark.usefixtures("single_thread")

#: CoNLL++ test sentences compared (the first ones, in file order)
SENTENCES = 400


def assert_same_spans(expected: list[list], found: list[list], tolerance: float = 1e-5) -> None:
    """The same spans and labels, scores within `tolerance`."""
    assert [[span[:3] for span in spans] for spans in found] == [
        [span[:3] for span in spans] for spans in expected
    ]
    assert [span[3] for spans in found for span in spans] == pytest.approx(
        [span[3] for spans in expected for span in spans], abs=tolerance
    )


def test_the_default_model_gives_the_fast_engines_spans_on_conllpp(conllpp_dir):
    """On CoNLL++ test sentences, the numpy engine's spans are the torch fast engine's (fp32)
    and its calibrated scores agree within 1e-5."""
    sentences = [
        sentence
        for document in read_conll_documents(conllpp_dir / "conllpp_test.txt")
        for sentence in document
    ][:SENTENCES]
    fast = make_engine(flat_tagger(models.DEFAULT_MODEL), device="cpu", precision="fp32")
    expected = fast.predict(sentences)
    ours = make_engine(numpy_tagger(models.DEFAULT_MODEL))
    assert ours.name == "numpy" and ours.span_scorer is not None  # calibrated, as the fast one
    found = ours.predict(sentences)
    assert sum(map(len, found)) > SENTENCES  # a real test: many entities
    assert_same_spans(expected, found)


def test_stacked_lstm_layers_and_no_reprojection(tmp_path):
    """A two-layer BiLSTM over word, one-hot and character embeddings, not reprojected."""
    path = tmp_path / "tagger.pt"
    _tagger(
        [_word_embeddings(), _one_hot(), CharacterEmbeddings(_char_dictionary(), 6, 5)],
        rnn_layers=2,
        reproject_embeddings=False,
    ).save(path)
    sentences = _sentences(40, seed=7)
    expected = make_engine(models.load_model(path, "cpu", engine="fast")).predict(sentences)
    chosen = models.load_model(path, "cpu", engine="numpy")
    assert isinstance(chosen, NumpyTagger)
    assert_same_spans(expected, make_engine(chosen).predict(sentences))
    # small batches, the word-type cache emptied between them: the same again
    small = numpy_tagger(models.cached_export(path), max_tokens_per_batch=50, max_cached_types=5)
    assert_same_spans(expected, make_engine(small).predict(sentences))


def test_the_rule_picks_numpy_on_a_cpu_in_float32():
    assert numpy_engine_wanted("auto", "cpu", "fp32")
    assert numpy_engine_wanted("auto", "cpu", "auto")
    assert not numpy_engine_wanted("auto", "cpu", "bf16")
    assert not numpy_engine_wanted("fast", "cpu", "fp32")
    assert not numpy_engine_wanted("flair", "auto", "fp32")
    assert not numpy_engine_wanted("auto", "cuda", "fp32")
    assert numpy_engine_wanted("numpy", "auto", "fp32")
    with pytest.raises(UsageError, match="runs on the CPU"):
        numpy_engine_wanted("numpy", "cuda:0", "fp32")


def test_auto_falls_back_where_numpy_does_not_cover_the_model(tmp_path, caplog):
    """A GRU: `auto` loads it for the torch fast engine; `--engine numpy` says why not."""
    path = tmp_path / "gru.pt"
    _tagger([_one_hot(), CharacterEmbeddings(_char_dictionary(), 5, 4)], rnn_type="GRU").save(path)
    assert isinstance(models.load_model(path, "cpu"), FlatTagger)
    with pytest.raises(ModelError, match="numpy engine does not run .*RNN type GRU"):
        models.load_model(path, "cpu", engine="numpy")


def test_limit_threads_sets_blas_threads_without_importing_torch():
    """A worker's share of the cores: numpy's BLAS gets it at once, torch when it loads."""
    script = (
        "import sys, numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from annotator.tagging.engines import limit_threads\n"
        "limit_threads(1)\n"
        "print(sorted({i['num_threads'] for i in threadpool_info()}), 'torch' in sys.modules)\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[1] False", "1"]

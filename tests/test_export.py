"""The flat export (safetensors + JSON description): the fast engine's model without Flair.

Each test builds its own tiny tagger; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch

flair = pytest.importorskip("flair")

from flair.embeddings import CharacterEmbeddings, HashEmbeddings  # noqa: E402
from flair.models import SequenceTagger  # noqa: E402

import annotator.models as models  # noqa: E402
from annotator.tagging.engines import make_engine  # noqa: E402
from annotator.tagging.export import FlatTagger  # noqa: E402
from annotator.tagging.export_header import read_description  # noqa: E402
from annotator.tagging.numpy_engine import NumpyTagger  # noqa: E402
from tests.test_fast_tagger import (  # noqa: E402
    VARIANTS,
    _char_dictionary,
    _sentences,
    _tagger,
    assert_same,
    flair_predictions,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# Flair 0.15.1 cannot load these two back from its own .pt (it saves no `bidirectional`, and
# renames the one-hot embeddings to one name), so there is no .pt to export
UNLOADABLE = {"11 embeddings (name sort order)"}
NUMPY_COVERS = {
    "word+char bilstm crf",
    "word+char bilstm softmax",
    "single char embedding, no rnn, softmax",
}
SAVABLE = [name for name in VARIANTS if "unidirectional" not in name and name not in UNLOADABLE]


@pytest.mark.parametrize("variant", SAVABLE)
def test_export_gives_the_spans_and_scores_of_its_pt(tmp_path, variant):
    """The export of a .pt, run by the fast engine without Flair, gives exactly the spans and
    scores that the .pt gives (loaded by Flair, run by the fast engine), which are Flair's."""
    path = tmp_path / "tagger.pt"
    VARIANTS[variant]().save(path)
    sentences = _sentences(60, seed=3)
    loaded = SequenceTagger.load(path)
    expected = make_engine(loaded, device="cpu").predict(sentences)
    assert_same(flair_predictions(loaded, sentences), expected)

    flat = models.load_model(path, device="cpu", engine="fast")
    assert isinstance(flat, FlatTagger)
    assert models.cached_export(path).is_file()
    assert make_engine(flat, device="cpu").predict(sentences) == expected
    # on the CPU, `auto` runs the numpy engine where it covers the model: the same spans,
    # scores to float rounding
    chosen = models.load_model(path, device="cpu")
    assert isinstance(chosen, NumpyTagger) == (variant in NUMPY_COVERS)
    found = make_engine(chosen, device="cpu").predict(sentences)
    assert [[span[:3] for span in spans] for spans in found] == [
        [span[:3] for span in spans] for spans in expected
    ]
    assert [span[3] for spans in found for span in spans] == pytest.approx(
        [span[3] for spans in expected for span in spans], abs=1e-5
    )
    # Flair's own tagger rebuilt from the export (for --engine flair): the same predictions
    rebuilt = models.load_tagger(path, device="cpu")
    assert isinstance(rebuilt, SequenceTagger)
    assert_same(flair_predictions(rebuilt, sentences), expected)


def test_export_is_rebuilt_when_the_pt_changes(tmp_path):
    path = tmp_path / "tagger.pt"
    tagger = VARIANTS["word+char bilstm crf"]()
    tagger.save(path)
    models.load_model(path, device="cpu")
    first = read_description(models.cached_export(path))
    assert first["source_sha256"] == models.file_sha256(path)

    with torch.no_grad():
        tagger.linear.bias.add_(torch.linspace(-3, 3, tagger.linear.bias.numel()))
    tagger.save(path)
    sentences = _sentences(30, seed=4)
    flat = models.load_model(path, device="cpu")
    second = read_description(models.cached_export(path))
    assert second["source_sha256"] == models.file_sha256(path) != first["source_sha256"]
    assert_same(flair_predictions(tagger, sentences), make_engine(flat).predict(sentences))


def test_models_the_fast_engine_does_not_cover_load_with_flair(tmp_path):
    path = tmp_path / "hashed.pt"
    _tagger([HashEmbeddings(50, 8), CharacterEmbeddings(_char_dictionary(), 8, 6)]).save(path)
    tagger = models.load_model(path, device="cpu")
    assert isinstance(tagger, SequenceTagger)
    assert make_engine(tagger).name == "flair"


def test_a_foreign_pt_is_named_trusted_code_once(tmp_path, monkeypatch, caplog):
    """A .pt is a pickle: the first load of one from outside the package says so in one line;
    once its export is cached, loading it runs no pickle and says nothing."""
    path = tmp_path / "tagger.pt"
    VARIANTS["word+char bilstm crf"]().save(path)
    monkeypatch.setattr(models, "_noticed", set())
    monkeypatch.delenv(models.TRUST_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="annotator"):
        models.load_model(path, device="cpu")
        models.load_model(path, device="cpu")
        models.load_tagger(path, device="cpu")
    notes = [r.getMessage() for r in caplog.records if "pickle" in r.getMessage()]
    assert len(notes) == 1 and str(path) in notes[0] and models.TRUST_ENV in notes[0]

    other = tmp_path / "other.pt"
    shutil.copyfile(path, other)
    caplog.clear()
    monkeypatch.setenv(models.TRUST_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="annotator"):
        models.load_model(other, device="cpu")
    assert not [r for r in caplog.records if "pickle" in r.getMessage()]


def test_the_notice_through_the_environment_and_the_cli(tmp_path, tiny_model):
    """$ANNOTATOR_MODEL naming a .pt: the notice on stderr, one line, and the run tags."""
    model = tmp_path / "mine.pt"
    shutil.copyfile(tiny_model, model)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "text": "Anna Berg works for Acme Corp ."}) + "\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != models.TRUST_ENV}
    env["ANNOTATOR_MODEL"] = str(model)
    run = [sys.executable, "-m", "annotator", "annotate", str(source), "-o"]
    first = subprocess.run(
        [*run, str(tmp_path / "a.jsonl")], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    notes = [line for line in first.stderr.splitlines() if "pickle" in line]
    assert len(notes) == 1 and str(model) in notes[0]
    second = subprocess.run(
        [*run, str(tmp_path / "b.jsonl")], env=env, capture_output=True, text=True
    )
    assert second.returncode == 0 and "pickle" not in second.stderr
    assert (tmp_path / "a.jsonl").read_text().count('"label"') > 0


def test_the_default_model_annotates_without_importing_flair_or_torch(tmp_path):
    """The packaged default is an export: `annotate` with it never imports Flair, and on a
    CPU the numpy engine runs it without torch."""
    assert models.DEFAULT_MODEL.suffix == ".safetensors"
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "text": "Angela Merkel visited Paris."}) + "\n")
    script = (
        "import sys\n"
        "from annotator.cli import cli\n"
        f"try: cli(['annotate', {str(source)!r}, '-o', {str(tmp_path / 'o.jsonl')!r},"
        " '--device', 'cpu'])\n"
        "except SystemExit as exit: assert not exit.code, exit.code\n"
        "print('flair' in sys.modules, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"
    found = json.loads((tmp_path / "o.jsonl").read_text())["entities"]
    assert {(e["entity_text"], e["label"]) for e in found} == {
        ("Angela Merkel", "PER"),
        ("Paris", "LOC"),
    }

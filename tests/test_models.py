import json
import shutil

import pytest
import tomllib
import torch
from click.testing import CliRunner

import annotator.models as models
from annotator.cli import cli
from annotator.errors import ModelError
from annotator.files import sha256_file
from annotator.tagging.calibration import CARD_KEY
from annotator.tagging.engines import FlairEngine
from annotator.tagging.export import read_export
from annotator.training.package import (
    HALF_FROM,
    package_default_model,
    raw_test_scores,
    save_half_precision,
)


@pytest.fixture
def package_dir(tmp_path, monkeypatch):
    """The package's data folder, moved to a temporary one: packaging never touches the real."""
    monkeypatch.setattr(models, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(models, "DEFAULT_MODEL", tmp_path / "data" / "default-model.safetensors")
    monkeypatch.setattr(models, "DEFAULT_MODEL_CARD", tmp_path / "data" / "MODEL_CARD.md")
    monkeypatch.setattr(models, "DEFAULT_METRICS", tmp_path / "data" / "default-model.metrics.json")
    return tmp_path / "data"


def test_package_model_writes_the_model_and_its_card(tiny_model, tmp_path, package_dir):
    """`make model`'s last step: the run's best model becomes the package default, with a card
    built from the run's own files (scores per type, config, command, size)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model.parent, run)
    metrics = json.loads((run / "metrics.json").read_text())
    result = CliRunner().invoke(cli, ["package-model", str(run), "--command", "make-it"])
    assert result.exit_code == 0, result.output
    assert models.DEFAULT_MODEL.stat().st_size < (run / "best-model.pt").stat().st_size
    packaged = json.loads((package_dir / "default-model.metrics.json").read_text())
    assert packaged == metrics  # `annotator plot default` draws the packaged model's run
    card = (package_dir / "MODEL_CARD.md").read_text()
    assert f"CoNLL++ test micro-F1: {100 * metrics['test']['micro']['f1']:.2f}" in card
    assert (
        f"best dev micro-F1 {100 * metrics['best_dev_f1']:.2f} at epoch {metrics['best_epoch']}"
        in card
    )
    for label, scores in metrics["test"]["per_type"].items():
        assert f"| {label} | {100 * scores['precision']:.2f} |" in card
    assert "    make-it" in card and (run / "config.toml").read_text().strip() in card
    assert "GloVe 6B 50d vectors (none: glove_words = 0)" in card

    # --model: a file made from the run (e.g. calibrated) is packaged with the run's card
    other = tmp_path / "calibrated.pt"
    state = torch.load(tiny_model, weights_only=False)
    state["state_dict"]["crf.transitions"] += 1.0  # not the run's best model
    torch.save(state, other)
    result = CliRunner().invoke(
        cli, ["package-model", str(run), "--command", "x", "--model", str(other)]
    )
    assert result.exit_code == 0, result.output
    assert torch.equal(
        _weights(models.DEFAULT_MODEL)["crf.transitions"], state["state_dict"]["crf.transitions"]
    )
    assert "sha256 " + sha256_file(models.DEFAULT_MODEL) in models.DEFAULT_MODEL_CARD.read_text()
    assert "mapped by an isotonic calibration" in models.DEFAULT_MODEL_CARD.read_text()
    state["model_card"] = {CARD_KEY: {"method": "sigmoid", "x": [0.0, 1.0], "y": [0.1, 0.9]}}
    torch.save(state, other)
    result = CliRunner().invoke(
        cli, ["package-model", str(run), "--command", "x", "--model", str(other)]
    )
    assert result.exit_code == 0, result.output
    assert "mapped by a sigmoid (Platt) calibration" in models.DEFAULT_MODEL_CARD.read_text()

    # a train + dev model has no dev scores to quote
    config = (run / "config.toml").read_text()
    assert "train_with_dev = false" in config
    (run / "config.toml").write_text(
        config.replace("train_with_dev = false", "train_with_dev = true")
    )
    assert CliRunner().invoke(cli, ["package-model", str(run), "--command", "x"]).exit_code == 0
    assert "trained on train + dev for" in (package_dir / "MODEL_CARD.md").read_text()
    (run / "config.toml").write_text(
        config.replace("train_with_dev = false", "train_with_dev = true").replace(
            "dev_holdout = 0.0", "dev_holdout = 0.25"
        )
    )
    assert CliRunner().invoke(cli, ["package-model", str(run), "--command", "x"]).exit_code == 0
    card = (package_dir / "MODEL_CARD.md").read_text()
    assert "except 25% of dev's documents, held out: best held-out dev micro-F1" in card
    assert "pieces), and on the 75% of dev's documents not held out;" in card
    assert "fitted on\n  the 25% of CoNLL++ dev's documents held out of training as raw" in card
    (run / "config.toml").write_text(config.replace("glove_words = 0", "glove_words = 150000"))
    assert CliRunner().invoke(cli, ["package-model", str(run), "--command", "x"]).exit_code == 0
    assert "(the 150,000 most frequent words)" in (package_dir / "MODEL_CARD.md").read_text()

    metrics["finished"] = False
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ModelError, match="has not finished"):
        package_default_model(run, "x")


def _weights(model) -> dict:
    if str(model).endswith(".safetensors"):
        return read_export(model)[1]
    return torch.load(model, weights_only=False)["state_dict"]


def test_half_precision_packaging_keeps_the_predictions(tiny_model, tmp_path):
    """The packaged model stores its matrices in float16 (half the size) and loads into the
    same float32 model: the spans are Flair's on the full-precision model, scores to 3 digits."""
    packaged = tmp_path / "half.pt"
    save_half_precision(tiny_model, packaged)
    full, half = _weights(tiny_model), _weights(packaged)
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in half.items()}
    halved = [k for k, v in half.items() if v.dtype == torch.float16]
    assert halved and all(full[k].numel() >= HALF_FROM for k in halved)
    # biases and the CRF's transitions keep every digit
    assert all(torch.equal(full[k], v) for k, v in half.items() if k not in halved)
    assert "crf.transitions" in half and "crf.transitions" not in halved
    assert packaged.stat().st_size < 0.6 * tiny_model.stat().st_size

    sentences = [
        line.split()
        for line in ("Anna Berg works for Acme Corp in Paris .", "Bob Stone visited Oslo .")
    ]
    before = FlairEngine(models.load_tagger(tiny_model, "cpu")).predict(sentences)
    loaded = models.load_tagger(packaged, "cpu")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    after = FlairEngine(loaded).predict(sentences)
    assert any(before) and [[s[:3] for s in spans] for spans in after] == [
        [s[:3] for s in spans] for spans in before
    ]
    scores = [s[3] for spans in before for s in spans], [s[3] for spans in after for s in spans]
    assert scores[0] == pytest.approx(scores[1], abs=1e-3)


def test_package_model_card_leads_with_the_raw_text_figures(
    tiny_model, synthetic_corpus, package_dir
):
    result = CliRunner().invoke(
        cli,
        [
            "package-model",
            str(tiny_model.parent),
            "--command",
            "x",
            "--corpus",
            str(synthetic_corpus),
        ],
    )
    assert result.exit_code == 0, result.output
    card = (package_dir / "MODEL_CARD.md").read_text()
    raw = raw_test_scores(synthetic_corpus)
    document = card.index(
        f"one text per document: micro-F1 {100 * raw['document']['micro']['f1']:.2f}"
    )
    sentence = card.index(
        f"one text per sentence: micro-F1 {100 * raw['sentence']['micro']['f1']:.2f}"
    )
    assert document < sentence < card.index("CoNLL++ test micro-F1:")


def test_info_prints_versions_device_and_the_default_models_card():
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for name in ("annotator", "flair", "torch", "spacy", "pyarrow"):
        assert name in result.output
    assert "cpu" in result.output
    assert models.DEFAULT_MODEL_CARD.read_text().splitlines()[0] in result.output
    assert "CoNLL++ test micro-F1" in result.output


def test_the_shipped_default_model_is_the_one_its_card_describes():
    """The repository's one binary: at most 25 MB, and the card names its exact bytes and the
    GloVe words of the config it was trained with."""
    size = models.DEFAULT_MODEL.stat().st_size
    assert size <= 25_000_000
    card = models.DEFAULT_MODEL_CARD.read_text()
    assert f"sha256 {sha256_file(models.DEFAULT_MODEL)}" in card
    assert f"**Size**: {size / 1e6:.1f} MB" in card
    recipe = tomllib.loads((models.DATA_DIR / "default-model.toml").read_text())
    assert f"glove_words = {recipe['glove_words']}" in card

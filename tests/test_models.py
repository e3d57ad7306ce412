import json
import shutil

import pytest
from click.testing import CliRunner

import annotator.models as models
from annotator.cli import cli
from annotator.errors import ModelError
from annotator.files import sha256_file
from annotator.training.package import package_default_model, raw_test_scores


def test_package_model_writes_the_model_and_its_card(tiny_model, tmp_path, monkeypatch):
    """`make model`'s last step: the run's best model becomes the package default, with a card
    built from the run's own files (scores per type, config, command, size)."""
    monkeypatch.setattr(models, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(models, "DEFAULT_MODEL", tmp_path / "data" / "default-model.pt")
    monkeypatch.setattr(models, "DEFAULT_MODEL_CARD", tmp_path / "data" / "MODEL_CARD.md")
    monkeypatch.setattr(models, "DEFAULT_METRICS", tmp_path / "data" / "default-model.metrics.json")
    run = tmp_path / "run"
    shutil.copytree(tiny_model.parent, run)
    metrics = json.loads((run / "metrics.json").read_text())
    result = CliRunner().invoke(cli, ["package-model", str(run), "--command", "make-it"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "default-model.pt").read_bytes() == (
        run / "best-model.pt"
    ).read_bytes()
    packaged = json.loads((tmp_path / "data" / "default-model.metrics.json").read_text())
    assert packaged == metrics  # `annotator plot default` draws the packaged model's run
    card = (tmp_path / "data" / "MODEL_CARD.md").read_text()
    assert f"CoNLL++ test micro-F1: {100 * metrics['test']['micro']['f1']:.2f}" in card
    assert (
        f"best dev micro-F1 {100 * metrics['best_dev_f1']:.2f} at epoch {metrics['best_epoch']}"
        in card
    )
    for label, scores in metrics["test"]["per_type"].items():
        assert f"| {label} | {100 * scores['precision']:.2f} |" in card
    assert "    make-it" in card and (run / "config.toml").read_text().strip() in card

    # --model: a file made from the run (e.g. calibrated) is packaged with the run's card
    other = tmp_path / "calibrated.pt"
    other.write_bytes(b"stand-in for a calibrated copy")
    result = CliRunner().invoke(
        cli, ["package-model", str(run), "--command", "x", "--model", str(other)]
    )
    assert result.exit_code == 0, result.output
    assert models.DEFAULT_MODEL.read_bytes() == other.read_bytes()
    assert "sha256 " + sha256_file(other) in (tmp_path / "data" / "MODEL_CARD.md").read_text()

    # a train + dev model has no dev scores to quote
    config = (run / "config.toml").read_text()
    assert "train_with_dev = false" in config
    (run / "config.toml").write_text(
        config.replace("train_with_dev = false", "train_with_dev = true")
    )
    assert CliRunner().invoke(cli, ["package-model", str(run), "--command", "x"]).exit_code == 0
    assert "trained on train + dev for" in (tmp_path / "data" / "MODEL_CARD.md").read_text()

    metrics["finished"] = False
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ModelError, match="has not finished"):
        package_default_model(run, "x")


def test_package_model_card_leads_with_the_raw_text_figures(
    tiny_model, synthetic_corpus, tmp_path, monkeypatch
):
    monkeypatch.setattr(models, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(models, "DEFAULT_MODEL", tmp_path / "data" / "default-model.pt")
    monkeypatch.setattr(models, "DEFAULT_MODEL_CARD", tmp_path / "data" / "MODEL_CARD.md")
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
    card = (tmp_path / "data" / "MODEL_CARD.md").read_text()
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

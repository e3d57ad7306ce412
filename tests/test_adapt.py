"""`annotator adapt`: a tiny news model adapted to synthetic contracts, and its refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from annotator.cli import cli
from annotator.files import sha256_file
from annotator.tagging.calibration import CARD_KEY
from annotator.training.adapt import ADAPTED_KEY
from tests.synthetic import contract_documents, write_column_file

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    return write_column_file(folder / "sample.conll", contract_documents(40, seed=3))


def _adapt(*args: str):
    return CliRunner().invoke(cli, ["adapt", *args], catch_exceptions=False)


def test_adapt_lifts_the_held_out_part_and_records_the_sample(
    tiny_model, synthetic_corpus, sample, tmp_path, single_thread
):
    output = tmp_path / "adapted.pt"
    result = _adapt(
        str(tiny_model),
        str(sample),
        "-o",
        str(output),
        "--replay",
        str(synthetic_corpus),
        "--epochs",
        "6",
        "--replay-ratio",
        "1",
        "--learning-rate",
        "0.1",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "before" in result.stdout and "micro" in result.stdout
    card = torch.load(output, map_location="cpu", weights_only=False)["model_card"]
    record = card[ADAPTED_KEY]
    before, after = record["held_out"]["before"], record["held_out"]["after"]
    assert after["micro"]["f1"] > before["micro"]["f1"] + 0.2, (before["micro"], after["micro"])
    assert record["sample"]["sha256"] == sha256_file(sample)
    assert record["sample"]["bytes"] == sample.stat().st_size
    assert record["from"]["sha256"] == sha256_file(tiny_model)
    assert record["replay"]["sentences_per_epoch"] > 0
    assert "held out of adapt" in card[CARD_KEY]["fitted_on"]  # the map is the sample's own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted.pt"]  # no temporary left

    # the adapted model is an ordinary model: annotate's pipeline loads and tags with it
    from annotator.pipeline import Annotator

    with Annotator(str(output), device="cpu", split_process=False) as annotator:
        text = "This Agreement is made between Tamsin Vale and Orlov Trading ."
        found = annotator.annotate_text(text)
    assert [(e.text, e.label) for e in found] == [("Tamsin Vale", "PER"), ("Orlov Trading", "PER")]


def _refused(tmp_path: Path, model: Path, sample: Path, *extra: str) -> str:
    output = tmp_path / "out.pt"
    result = _adapt(str(model), str(sample), "-o", str(output), "--device", "cpu", *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not output.exists()
    return result.stderr


def test_an_unknown_label_is_refused_naming_it(tiny_model, tmp_path):
    documents = contract_documents(12, seed=4)
    documents[5][0] = [("Clause", "B-SECTION"), ("7", "I-SECTION"), ("applies", "O")]
    sample = write_column_file(tmp_path / "labels.conll", documents)
    assert "SECTION" in _refused(tmp_path, tiny_model, sample)


def test_an_empty_sample_is_refused(tiny_model, tmp_path):
    sample = tmp_path / "empty.conll"
    sample.write_text("-DOCSTART- O\n\n", encoding="utf-8")
    assert "no token lines" in _refused(tmp_path, tiny_model, sample)


def test_a_wrong_column_format_is_refused(tiny_model, synthetic_corpus, tmp_path):
    # CoNLL's four columns read as `token TAG`: says where the tags are
    stderr = _refused(tmp_path, tiny_model, synthetic_corpus / "train.txt")
    assert "--column-format text,_,_,ner" in stderr


def test_a_sample_too_small_to_hold_out_is_refused(tiny_model, tmp_path):
    sample = write_column_file(tmp_path / "small.conll", contract_documents(2, seed=5))
    assert "too small" in _refused(tmp_path, tiny_model, sample)


def test_ctrl_c_mid_run_leaves_no_output_file(tiny_model, sample, tmp_path):
    output = tmp_path / "adapted.pt"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "annotator",
            "adapt",
            str(tiny_model),
            str(sample),
            "-o",
            str(output),
            "--epochs",
            "1000",
            "--device",
            "cpu",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    lines = []
    for line in process.stderr:  # progress lines, one per epoch
        lines.append(line)
        if "epoch 0 " in line:  # training starts next
            break
        assert time.monotonic() < deadline, "".join(lines)
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130, "".join(lines) + rest
    assert "Traceback" not in rest and "Interrupted" in rest
    assert list(tmp_path.iterdir()) == []

"""End-to-end evaluation on raw text: rebuilt texts, span decoding, scores by hand count."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.corpus import read_tagged_documents, token_spans
from annotator.raw_evaluation import evaluate_raw, rebuild, score

CORPUS = """-DOCSTART- -X- -X- O

SOCCER NN I-NP O
- : O O
JAPAN NNP I-NP B-LOC
WIN NN I-NP O
. . O O

Nadim NNP I-NP B-PER
Ladki NNP I-NP I-PER

-DOCSTART- -X- -X- O

Bre-X NNP I-NP B-ORG
met VBD I-VP O
Angela NNP I-NP B-PER
Merkel NNP I-NP I-PER
in IN I-PP O
New NNP I-NP B-LOC
York NNP I-NP I-LOC
. . O O
"""


@pytest.fixture()
def corpus_dir(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.txt").write_text(CORPUS, encoding="utf-8")
    return folder


def test_token_spans_read_iob1_bio_and_bioes():
    assert token_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC"]) == [
        (0, 2, "PER"),
        (3, 5, "LOC"),
        (5, 6, "LOC"),
    ]
    assert token_spans(["S-ORG", "B-PER", "E-PER", "I-MISC"]) == [
        (0, 1, "ORG"),
        (1, 3, "PER"),
        (3, 4, "MISC"),
    ]
    assert token_spans(["I-PER", "I-ORG", "O"]) == [(0, 1, "PER"), (1, 2, "ORG")]
    # malformed sequences and `_` tags read as Flair reads them, so that end-to-end gold and
    # Flair's token-level gold are the same spans
    assert token_spans(["S-PER", "I-PER"]) == [(0, 2, "PER")]
    assert token_spans(["B-PER", "E-PER", "I-PER"]) == [(0, 3, "PER")]
    assert token_spans(["_", "B-PER", ""]) == [(1, 2, "PER")]


def test_rebuilt_documents_and_sentences_keep_gold_text(corpus_dir):
    documents = read_tagged_documents(corpus_dir / "test.txt")
    assert [len(d) for d in documents] == [2, 1]
    by_document = rebuild(documents, "document")
    assert by_document[0].text == "SOCCER - JAPAN WIN .\nNadim Ladki"
    assert [by_document[0].text[s:e] for s, e, _ in by_document[0].spans] == [
        "JAPAN",
        "Nadim Ladki",
    ]
    assert [(by_document[1].text[s:e], label) for s, e, label in by_document[1].spans] == [
        ("Bre-X", "ORG"),
        ("Angela Merkel", "PER"),
        ("New York", "LOC"),
    ]
    by_sentence = rebuild(documents, "sentence")
    assert [t.text for t in by_sentence][:2] == ["SOCCER - JAPAN WIN .", "Nadim Ladki"]
    assert by_sentence[1].spans == [(0, 11, "PER")]


def test_scores_are_a_hand_count():
    gold = [[(0, 5, "LOC"), (10, 15, "PER")], [(0, 3, "ORG")]]
    predicted = [
        [(0, 5, "LOC", 0.95), (10, 14, "PER", 0.6), (20, 22, "PER", 0.3)],
        [(0, 3, "LOC", 0.8)],
    ]
    result = score(gold, predicted)
    assert (result.micro.precision, result.micro.recall) == (0.25, pytest.approx(1 / 3))
    assert result.per_type["LOC"].precision == 0.5 and result.per_type["LOC"].recall == 1.0
    assert result.per_type["PER"].f1 == 0.0 and result.per_type["ORG"].support == 1
    assert result.scored == [(0.95, True), (0.6, False), (0.3, False), (0.8, False)]
    calibration = result.to_dict()["calibration"]
    # bins 0.3 (0 of 1 right), 0.6 (0 of 1), 0.8 (0 of 1), 0.9 (1 of 1)
    assert calibration["ece"] == pytest.approx((0.3 + 0.6 + 0.8 + 0.05) / 4)
    assert calibration["share_correct_at_0.9"] == 1.0


def test_raw_evaluation_runs_the_annotator_and_counts_exact_spans(
    tiny_model, corpus_dir, single_thread
):
    from annotator.pipeline import Annotator

    annotator = Annotator(str(tiny_model), device="cpu", split_process=False)
    result = evaluate_raw(None, corpus_dir, "test", annotator=annotator)
    texts = rebuild(read_tagged_documents(corpus_dir / "test.txt"), "document")
    found = [
        {(e.start, e.end, e.label) for e in entities}
        for entities in annotator.annotate_texts(t.text for t in texts)
    ]
    right = sum(len(f & set(t.spans)) for f, t in zip(found, texts))
    assert result.micro.support == 5 and result.documents == 2 and result.sentences == 3
    assert result.micro.recall == right / 5
    assert result.micro.precision == (right / sum(map(len, found)) if any(found) else 0.0)


def test_evaluate_raw_cli_writes_json(tiny_model, corpus_dir, tmp_path, single_thread):
    out = tmp_path / "raw.json"
    outcome = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(tiny_model),
            str(corpus_dir),
            "--raw",
            "--unit",
            "sentence",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "one text per sentence: 3 texts" in outcome.output
    data = json.loads(out.read_text())
    assert data["unit"] == "sentence" and data["micro"]["support"] == 5
    assert len(data["calibration"]["bins"]) == 10


def test_a_labelled_sample_file_is_evaluated_and_calibrated_on_as_a_split(
    tiny_model, synthetic_corpus, tmp_path, single_thread
):
    """A user's own labelled text, one file: scored as the same text is as a corpus's test
    split, token level and end to end, and a calibration map fitted on it, named after it."""
    from annotator.models import load_tagger
    from annotator.tagging.calibration import CARD_KEY

    sample = tmp_path / "my-sample.conll"
    shutil.copy(synthetic_corpus / "test.txt", sample)
    runner = CliRunner()
    scores = {}
    for corpus in (synthetic_corpus, sample):
        out = tmp_path / f"{corpus.name}.json"
        outcome = runner.invoke(
            cli,
            [
                "evaluate",
                str(tiny_model),
                str(corpus),
                "--raw",
                "--report",
                str(tmp_path / f"report-{corpus.name}"),
                "--device",
                "cpu",
                "--json",
                str(out),
            ],
        )
        assert outcome.exit_code == 0, outcome.output
        scores[corpus] = json.loads(out.read_text())
    assert scores[sample] == scores[synthetic_corpus]
    assert scores[sample]["raw"]["micro"]["support"] > 0
    calibrated = tmp_path / "mine.pt"
    outcome = runner.invoke(
        cli, ["calibrate", str(tiny_model), str(sample), "-o", str(calibrated), "--device", "cpu"]
    )
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.startswith("my-sample.conll: ")
    card = load_tagger(calibrated, device="cpu").model_card[CARD_KEY]
    assert card["fitted_on"] == "my-sample.conll, raw text per document"
    two_columns = tmp_path / "two.conll"  # read with the default four-column format
    two_columns.write_text("Paris B-LOC\nis O\n", encoding="utf-8")
    for args in (["evaluate", "--raw"], ["calibrate", "-o", str(tmp_path / "x.pt")]):
        outcome = runner.invoke(cli, [args[0], str(tiny_model), str(two_columns), *args[1:]])
        assert outcome.exit_code == 1 and "use --column-format text,ner" in outcome.output
        assert "Traceback" not in outcome.output

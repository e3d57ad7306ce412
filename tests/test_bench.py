"""`annotator bench`: runs on a tiny input, prints every row, writes JSON, checks identical
output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from annotator.bench import docs as bench_docs
from annotator.bench import report
from annotator.bench import rows as bench_rows
from annotator.bench import run as bench_run
from annotator.cli import cli
from annotator.errors import AnnotatorError
from tests.synthetic import sentences

ROW_LABELS = [
    "(1) Flair tutorial, per document",
    "(2) Flair predict, all sentences",
    "(3) annotator annotate, end to end",
    "(3p) fast engine predict only",
    "(3n) numpy engine predict only",
    "(4) forward pass only (ceiling)",
    "(5) spaCy NER, nlp.pipe",
]


def _documents(path: Path, count: int = 3) -> Path:
    pool = [" ".join(token for token, _ in pairs) for pairs in sentences(6 * count, seed=3)]
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            text = " ".join(pool[6 * index : 6 * index + 6]).replace(" .", ".").replace(" ,", ",")
            handle.write(json.dumps({"id": f"d{index}", "text": text}) + "\n")
    return path


def test_bench_prints_every_row_writes_json_and_reports_identical_output(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(bench_run, "FIRST_ANSWER_RUNS", 1)
    source = _documents(tmp_path / "docs.jsonl")
    out = tmp_path / "results" / "bench.json"
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(source),
            "--model",
            str(tiny_model),
            "--device",
            "cpu",
            "--no-isolate",
            "--batch-sizes",
            "32,64",
            "--spacy-ner",
            "off",
            "--json",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    table = result.output
    for label in ROW_LABELS:
        assert label in table
    assert "skipped: no spaCy NER pipeline" in table
    assert "goals (wall-clock words/s):" in table and "(3) vs (2) at batch 32: " in table

    report = json.loads(out.read_text())
    assert {"environment", "input", "options", "sections"} <= set(report)
    (section,) = report["sections"]
    assert section["documents"] == 3 and section["words"] > 100
    assert {"name", "model", "rows", "goals", "memory", "summary"} <= set(section)
    rows = {row["key"]: row for row in section["rows"]}
    assert set(rows) == {"1", "2@32", "2@64", "3", "3p", "3n", "4", "5"}
    for key in ("1", "2@32", "2@64", "3", "3p", "3n", "4"):
        row = rows[key]
        assert row["words"] == section["words"] and row["seconds"] > 0
        assert row["words_per_second"] > 0 and row["peak_rss_mb"] > 0 and row["device"] == "cpu"
        assert {"ratio", "identical", "comparison", "batch", "runs", "skipped"} <= set(row)
    assert rows["2@32"]["ratio"] == 1.0 and rows["2@32"]["comparison"] == "reference"
    for key in ("1", "2@64", "3", "3p", "3n"):  # the same spans, labels, scores as Flair's
        assert rows[key]["identical"] is True, rows[key]["comparison"]
    # on the CPU, annotate runs the numpy engine (3n alone); 3p is the torch fast engine
    assert rows["3"]["engine"] == rows["3n"]["engine"] == "numpy" and rows["3"]["entities"] > 0
    assert rows["3p"]["engine"] == "fast"
    assert rows["5"]["skipped"] and rows["5"]["words_per_second"] is None
    assert [goal["target"] for goal in section["goals"]] == [3.0, 2.0, 0.7, 1.5]
    assert section["goals"][3]["met"] is None  # no bf16 rows: not judged
    assert section["goals"][1]["met"] is None  # no spaCy row: not judged
    first = section["first_answer"]  # one document, a fresh `annotator annotate` process
    assert 0 < first["usage_error_seconds"] < first["seconds"] and first["usage_error_exit"] == 2
    assert f"first answer: {first['seconds']:.2f} s" in table and first["engine"] == "numpy"


def test_rows_run_in_fresh_processes_with_their_own_peak_rss(tiny_model, tmp_path):
    """The isolated path: a worker process per row, its result read back from JSON."""
    docs = tmp_path / "docs.jsonl"
    bench_docs.write_docs(docs, bench_docs.synthetic_documents(2, words=60))
    run = bench_run._Runner(tmp_path, isolate=True, log=lambda line: None)
    split = tmp_path / "split.pkl"
    prepared = run({"kind": "prepare", "docs": str(docs), "split": str(split)}, "prepare")
    assert prepared["documents"] == 2 and prepared["words"] > 100
    result = run(
        {
            "kind": "annotate",
            "model": str(tiny_model),
            "device": "cpu",
            "docs": str(docs),
            "split": str(split),
            "output": str(tmp_path / "out.parquet"),
            "threads": 1,
        },
        "annotate",
    )
    assert result["words"] == prepared["words"] and result["threads"] == 1
    assert 50 < result["peak_rss_mb"] < 4000 and result["engine"] == "numpy"
    assert result["entities"] and not (tmp_path / "out.parquet").exists()


def test_generated_documents_are_deterministic_news_like_texts(tmp_path):
    corpus = tmp_path / "conll"
    corpus.mkdir()
    lines = ["-DOCSTART- -X- -X- O", ""]
    for pairs in sentences(40, seed=1):
        lines += [f"{token} NN O {tag}" for token, tag in pairs] + [""]
    (corpus / "test.txt").write_text("\n".join(lines))
    texts = bench_docs.conll_documents(corpus, 3, words=50)
    assert texts == bench_docs.conll_documents(corpus, 3, words=50) and len(texts) == 3
    assert all(len(text.split()) >= 40 for text in texts)
    assert " ." not in texts[0] and " ," not in texts[0]
    options = bench_run.BenchOptions(corpus=str(corpus), docs=1)
    assert bench_run.load_documents(options)[0] == bench_docs.conll_documents(corpus, 1)
    # more documents than the corpus holds: its texts again, in order (a ~1M-word GPU bench)
    every = bench_docs.conll_documents(corpus, 100)
    options = bench_run.BenchOptions(corpus=str(corpus), docs=len(every) + 2)
    texts, origin = bench_run.load_documents(options)
    assert texts == (every * 3)[: len(every) + 2]
    assert f"({len(every)} texts, repeated to {len(every) + 2})" in origin
    fallback, origin = bench_run.load_documents(
        bench_run.BenchOptions(corpus=None, docs=2, inputs=())
    )
    assert len(fallback) == 2 and fallback[0]
    assert (
        bench_docs.detokenize(["He", "said", '"', "no", '"', "(", "U.S.", ")", "."])
        == 'He said "no" (U.S.).'
    )


def test_compare_entities_tolerates_only_tiny_score_differences():
    reference = [[0, 0, 0, 4, "PER", 0.9], [1, 2, 5, 9, "LOC", 0.5]]
    assert report.compare_entities(reference, [[0, 0, 0, 4, "PER", 0.90005], reference[1]])[0]
    assert not report.compare_entities(reference, [[0, 0, 0, 4, "PER", 0.8], reference[1]])[0]
    assert not report.compare_entities(reference, [[0, 0, 0, 4, "ORG", 0.9], reference[1]])[0]
    assert not report.compare_entities(reference, reference[:1])[0]
    # a calibrated model: the same spans and labels are enough, other labels are not
    calibrated = [[0, 0, 0, 4, "PER", 0.2], reference[1]]
    assert report.compare_entities(reference, calibrated, None) == (
        True,
        "2 spans (calibrated scores, not compared)",
    )
    assert not report.compare_entities(reference, [[0, 0, 0, 4, "ORG", 0.9]] * 2, None)[0]


def test_bench_splits_as_the_model_says_and_knows_calibrated_models(tiny_model, tmp_path):
    from annotator.models import load_tagger
    from annotator.segmentation import segmentation_card
    from annotator.tagging.calibration import CARD_KEY

    assert bench_rows.run_spec({"kind": "model-rules", "model": str(tiny_model)}) == {
        "segmenter": {},
        "calibrated": False,
    }
    tagger = load_tagger(tiny_model, device="cpu")
    card = {**segmentation_card(False, line_breaks=True), CARD_KEY: {"x": [0.0], "y": [0.0]}}
    tagger.model_card = {**(tagger.model_card or {}), **card}
    tagger.save(tmp_path / "ruled.pt")
    assert bench_rows.run_spec({"kind": "model-rules", "model": str(tmp_path / "ruled.pt")}) == {
        "segmenter": {"line_breaks": True},
        "calibrated": True,
    }
    docs = tmp_path / "docs.jsonl"
    bench_docs.write_docs(docs, ["HEADLINE\nJapan won .", "Paris\n\nRome"])
    for segmenter, count in (({}, 2), ({"line_breaks": True}, 4)):
        spec = {"kind": "prepare", "docs": str(docs), "split": str(tmp_path / "s.pkl")}
        assert bench_rows.run_spec({**spec, "segmenter": segmenter})["sentences"] == count


def test_copies_of_documents_count_once_and_bad_gpu_options_are_refused(tmp_path):
    rows = {
        "doc_id": ["0-3", "1-3", "7"],
        "sentence": [0, 0, 1],
        "start_char": [0, 0, 5],
        "end_char": [4, 4, 9],
        "label": ["PER", "PER", "LOC"],
        "score": [0.5, 0.5, 0.25],
    }
    pq.write_table(pa.table(rows), tmp_path / "part.parquet")
    assert bench_rows._parquet_entities([tmp_path / "part.parquet"]) == [
        [3, 0, 0, 4, "PER", 0.5],
        [7, 1, 5, 9, "LOC", 0.25],
    ]
    for bad in ({"annotate_workers": 0}, {"workers_copies": 0}, {"flair_docs": 0}):
        with pytest.raises(AnnotatorError, match="must be at least 1"):
            bench_run.run_bench(bench_run.BenchOptions(**bad), echo=lambda line: None)


def test_rows_count_their_own_words_and_flairs_rows_compare_on_their_documents(tmp_path):
    """No processes: a stand-in runner answers each row. Flair's rows saw the first document
    (100 words), row 3w the documents twice; spans are compared on Flair's documents only."""
    spans = [[0, 0, 0, 2, "PER", 0.5]]
    later = [[1, 0, 3, 4, "LOC", 0.25]]  # in a document Flair's rows did not see

    def run(spec, what):
        result = {"seconds": 1.0, "cpu_seconds": 1.0, "peak_rss_mb": 10.0, "gpu_peak_mb": None}
        if spec["kind"] == "flair-docs" or spec.get("engine") == "flair":
            return {**result, "entities": spans}
        if spec["kind"] == "forward":
            return result
        gpu = 5.0 if spec["kind"] == "annotate-workers" else None
        return {**result, "gpu_peak_mb": gpu, "entities": spans + later}

    options = bench_run.BenchOptions(batch_sizes=(32,), annotate_workers=2, workers_copies=3)
    docs, flair = tmp_path / "docs.jsonl", tmp_path / "flair.jsonl"
    section = bench_run.run_section(
        "model", "m.pt", docs, tmp_path / "split.pkl", 300, options, run, tmp_path,
        with_spacy=False, memory_docs=None, flair_input=(flair, tmp_path / "f.pkl", 100, 1),
    )  # fmt: skip
    rows = {row["key"]: row for row in section["rows"]}
    assert [rows[key]["words"] for key in ("1", "2@32", "3", "3w", "3p", "4")] == [
        100, 100, 300, 900, 300, 300,
    ]  # fmt: skip
    assert rows["3w"]["words_per_second"] == 900 and rows["3w"]["gpu_peak_mb"] == 5.0
    assert all(rows[key]["identical"] for key in ("1", "3", "3w", "3p", "3n"))
    assert [row["key"] for row in section["rows"]].index("3w") == 3  # right after (3)
    # without --flair-docs every row but 3w sees the documents once
    section = bench_run.run_section(
        "model", "m.pt", docs, tmp_path / "split.pkl", 300, options, run, tmp_path,
        with_spacy=False, memory_docs=None,
    )  # fmt: skip
    assert {row["key"]: row["words"] for row in section["rows"] if not row["skipped"]} == {
        "1": 300, "2@32": 300, "3": 300, "3w": 900, "3p": 300, "3n": 300, "4": 300,
    }  # fmt: skip
    # a calibrated model with sentence rules: every row splits by them; scores are not compared
    seen = []

    def calibrated(spec, what):
        seen.append(spec["segmenter"])
        result = run(spec, what)
        if spec["kind"] in ("annotate", "annotate-workers"):
            result["entities"] = [[*e[:5], 0.99] for e in result["entities"]]
        return result

    section = bench_run.run_section(
        "model", "m.pt", docs, tmp_path / "split.pkl", 300, options, calibrated, tmp_path,
        with_spacy=False, memory_docs=None, flair_input=(flair, tmp_path / "f.pkl", 100, 1),
        rules={"segmenter": {"line_breaks": True}, "calibrated": True},
    )  # fmt: skip
    assert seen and all(segmenter == {"line_breaks": True} for segmenter in seen)
    rows = {row["key"]: row for row in section["rows"]}
    assert rows["3"]["identical"] and "not compared" in rows["3"]["comparison"]

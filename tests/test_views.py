"""Training curves, the entity viewer, `annotate --html` and `evaluate --report`."""

import json
import re
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.io.writers import SPANS_SCHEMA
from tests.synthetic import write_corpus

HOSTILE = (
    "<script>alert(1)</script> Tom &amp; Jerry <img src=x onerror=alert(2)> "
    "met John Smith in Oslo ."
)
DOCS = [
    {"id": "h1", "text": HOSTILE},
    {"id": "h2", "text": "Siemens opened an office in Berlin ."},
    {"id": "h3", "text": "Prices rose sharply last week ."},
]


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _span(
    doc_id: str,
    text: str,
    label: str,
    start: int | None = None,
    end: int | None = None,
    said: str | None = None,
) -> dict:
    source = next(d["text"] for d in DOCS if d["id"] == doc_id) if doc_id.startswith("h") else ""
    start = source.index(text) if start is None else start
    end = start + len(text) if end is None else end
    return {
        "doc_id": doc_id,
        "sentence": 0,
        "start_char": start,
        "end_char": end,
        "entity_text": said or text,
        "label": label,
        "score": 0.99,
        "source": "docs.jsonl",
        "source_row": 1,
        "run_id": "r1",
        "model_sha": "abababababab",
    }


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def docs_file(tmp_path) -> Path:
    return _jsonl(tmp_path / "docs.jsonl", DOCS)


def _marks(page: str) -> list[tuple[str, str]]:
    """(entity text, label) of every highlight displaCy drew."""
    return re.findall(r'<mark class="entity"[^>]*>\s*(.*?)\s*<span[^>]*>(.*?)</span>', page, re.S)


# --- training curves ----------------------------------------------------------------------


def test_training_writes_curves_and_plot_redraws_them(tiny_model, tmp_path):
    run = tiny_model.parent
    assert _png_size(run / "training.png") == (1000, 800)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["epochs"]) >= 2 and metrics["best_epoch"] >= 1

    out = tmp_path / "curves.png"
    result = _run(["plot", str(run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert _png_size(out) == (1000, 800)
    assert (
        _run(["plot", str(tiny_model), "-o", str(out)]).exit_code == 0
    )  # the model file works too

    empty = _run(["plot", str(tmp_path)])
    assert (
        empty.exit_code == 1
        and "no metrics.json" in empty.output
        and "Traceback" not in empty.output
    )


# --- the entity viewer --------------------------------------------------------------------


def test_view_escapes_markup_and_highlights_exactly_the_entity(docs_file, tmp_path):
    spans = _jsonl(
        tmp_path / "spans.jsonl",
        [
            _span("h1", "John Smith", "PER"),
            _span("h1", "Oslo", "LOC"),
            _span("h2", "Siemens", "ORG"),
            _span("h2", "Berlin", "LOC"),
        ],
    )
    out = tmp_path / "view.html"
    result = _run(["view", str(spans), "--docs", str(docs_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    # the document's markup is shown as text, escaped once; nothing in the page can run
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "Tom &amp;amp; Jerry" in page
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "default-src 'none'" in page  # and a policy that forbids scripts anyway
    assert _marks(page) == [
        ("John Smith", "PER"),
        ("Oslo", "LOC"),
        ("Siemens", "ORG"),
        ("Berlin", "LOC"),
    ]
    assert "Showing <b>3</b> of <b>3</b> documents" in page
    assert "Warning" not in result.output and "3 of 3 documents, 4 entities" in result.output

    only = _run(["view", str(spans), "--docs", str(docs_file), "-o", str(out), "--label", "ORG"])
    assert only.exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert _marks(page) == [("Siemens", "ORG")]
    assert "Showing <b>1</b> of <b>1</b> documents with ORG entities (3 documents in all)" in page
    assert "h1</h2>" not in page and "h2</h2>" in page

    limited = _run(["view", str(spans), "--docs", str(docs_file), "-o", str(out), "--limit", "1"])
    assert limited.exit_code == 0 and "Showing <b>1</b> of <b>3</b>" in out.read_text(
        encoding="utf-8"
    )


def test_view_reports_bad_offsets_and_missing_documents(docs_file, tmp_path):
    spans = _jsonl(
        tmp_path / "spans.jsonl",
        [
            _span("h1", "John Smith", "PER"),
            _span("h2", "Siemens", "ORG", start=30, end=80),  # outside the 36-character text
            _span("h2", "Berlin", "LOC", said="Paris"),  # text[start:end] is not the entity's text
            _span("ghost", "Nobody", "PER", start=0),  # no such document in --docs
        ],
    )
    out = tmp_path / "view.html"
    result = _run(["view", str(spans), "--docs", str(docs_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "h2: ORG entity [30:80] 'Siemens': offsets not whole numbers within the text "
        "(36 characters)" in result.output
    )
    assert "h2: LOC entity [28:34] 'Paris': the text there is 'Berlin'" in result.output
    assert (
        "1 document(s) with entities in the annotate output are not in --docs ('ghost')"
        in result.output
    )
    page = out.read_text(encoding="utf-8")
    assert (
        "<b>2 entities not drawn</b>" in page
        and "offsets not whole numbers within the text" in page
    )
    assert "not in --docs (&#x27;ghost&#x27;)" in page
    assert _marks(page) == [("John Smith", "PER")]  # the bad ones are listed, never drawn

    # an entity that is no object, or float offsets, in a documents-layout file: said, not drawn
    record = {"doc_id": "d", "text": "Paris is big.", "entities": [[0, 5]]}
    record["entities"].append({"start_char": 0.0, "end_char": 5.0, "label": "LOC"})
    documents = _jsonl(tmp_path / "documents.jsonl", [record])
    result = _run(["view", str(documents), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("offsets not whole numbers within the text") == 2

    nothing = _jsonl(tmp_path / "other.jsonl", [_span("ghost", "Nobody", "PER", start=0)])
    result = _run(["view", str(nothing), "--docs", str(docs_file), "-o", str(out)])
    assert (
        result.exit_code == 1
        and "none of the 1 documents" in result.output
        and "--id-field" in result.output
    )
    result = _run(["view", str(spans), "-o", str(out)])
    assert result.exit_code == 1 and "--docs" in result.output


def test_view_parquet_spans_shows_model_and_documents_layout_needs_no_docs(docs_file, tmp_path):
    spans = tmp_path / "spans.parquet"
    schema = SPANS_SCHEMA.with_metadata(
        {"annotator": json.dumps({"model": "models/ner.pt", "model_sha256": "ab" * 32})}
    )
    pq.write_table(pa.Table.from_pylist([_span("h2", "Berlin", "LOC")], schema=schema), spans)
    out = tmp_path / "view.html"
    assert _run(["view", str(spans), "--docs", str(docs_file), "-o", str(out)]).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert "model: models/ner.pt (sha256 abababababab…)" in page and _marks(page) == [
        ("Berlin", "LOC")
    ]

    documents = _jsonl(
        tmp_path / "documents.jsonl",
        [
            {"doc_id": "h1", "text": HOSTILE, "entities": [_span("h1", "John Smith", "PER")]},
            {"doc_id": "h3", "text": DOCS[2]["text"], "entities": []},
        ],
    )
    assert _run(["view", str(documents), "-o", str(out)]).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert _marks(page) == [("John Smith", "PER")] and "<script" not in page
    assert "Showing <b>2</b> of <b>2</b> documents" in page


# --- annotate --html ------------------------------------------------------------------------


def test_annotate_html_writes_the_viewer_page(tiny_model, docs_file, tmp_path):
    out, page_file = tmp_path / "out.parquet", tmp_path / "page.html"
    result = _run(
        [
            "annotate",
            str(docs_file),
            "-m",
            str(tiny_model),
            "-o",
            str(out),
            "--html",
            str(page_file),
            "--html-limit",
            "2",
        ]
    )
    assert result.exit_code == 0, result.output
    page = page_file.read_text(encoding="utf-8")
    assert f"model: {tiny_model}" in page and "Showing <b>2</b> of <b>3</b> documents" in page
    assert ("John Smith", "PER") in _marks(page) and "<script" not in page
    # the same page, from the output file and the documents
    view = tmp_path / "view.html"
    assert _run(["view", str(out), "--docs", str(docs_file), "-o", str(view)]).exit_code == 0
    assert _marks(view.read_text(encoding="utf-8"))[: len(_marks(page))] == _marks(page)


# --- evaluate --report ----------------------------------------------------------------------


def _perturbed_corpus(folder: Path) -> Path:
    """The synthetic corpus with its test split's gold tags damaged in four ways, so that the
    (perfect) tiny model makes errors of every kind against it."""
    write_corpus(folder)
    blocks = (folder / "test.txt").read_text().split("\n\n")
    changed = []
    for number, block in enumerate(blocks):
        rows = [line.split(" ") for line in block.splitlines()]
        tags = [row[3] for row in rows]
        kind = number % 5
        if kind == 0 and "B-PER" in tags:  # wrong type
            for row in rows:
                row[3] = row[3].replace("-PER", "-ORG")
        elif kind == 1 and "I-PER" in tags:  # wrong boundary: the last name is not tagged
            rows[tags.index("I-PER")][3] = "O"
        elif kind == 2 and "B-LOC" in tags:  # spurious: the place is not tagged
            rows[tags.index("B-LOC")][3] = "O"
        elif kind == 3 and rows and rows[-1][0] == ".":  # missed: a full stop tagged as MISC
            rows[-1][3] = "B-MISC"
        changed.append("\n".join(" ".join(row) for row in rows))
    (folder / "test.txt").write_text("\n\n".join(changed))
    return folder


def test_evaluate_report_agrees_with_the_evaluation(tiny_model, tmp_path):
    corpus = _perturbed_corpus(tmp_path / "corpus")
    report_dir, scores_file = tmp_path / "report", tmp_path / "scores.json"
    result = _run(
        [
            "evaluate",
            str(tiny_model),
            str(corpus),
            "--device",
            "cpu",
            "--json",
            str(scores_file),
            "--report",
            str(report_dir),
        ]
    )
    assert result.exit_code == 0, result.output
    assert "micro avg" in result.output
    for name in ("scores.png", "confusion.png"):
        width, height = _png_size(report_dir / name)
        assert width >= 600 and height >= 400
    report = json.loads((report_dir / "report.json").read_text())
    scores = json.loads(scores_file.read_text())
    confusion = report["confusion"]
    rows, columns, counts = confusion["rows"], confusion["columns"], confusion["counts"]
    assert rows[-1] == "spurious" and columns[-1] == "missed" and counts[-1][-1] is None
    assert set(report["labels"]) == set(scores["per_type"])
    for label, flair in scores["per_type"].items():
        tp = counts[rows.index(label)][columns.index(label)]
        gold = sum(counts[rows.index(label)])
        predicted = sum(row[columns.index(label)] for row in counts)
        assert report["true_positives"][label] == tp
        assert gold == flair["support"]  # every gold span is in its row once
        assert tp == round(flair["recall"] * flair["support"])  # Flair's exact-match TP
        if flair["precision"] > 0:
            assert predicted == round(tp / flair["precision"])
    micro = scores["micro"]
    all_tp = sum(report["true_positives"].values())
    assert all_tp == round(micro["recall"] * micro["support"])
    assert report["errors"]["wrong type"] > 0 and report["errors"]["wrong boundary"] > 0
    assert report["errors"]["missed"] > 0 and report["errors"]["spurious"] > 0
    # a gold PER turned ORG: the model's PER prediction lands in the ORG row
    assert counts[rows.index("ORG")][columns.index("PER")] > 0

    errors = (report_dir / "errors.html").read_text(encoding="utf-8")
    for anchor in ("wrong-type", "wrong-boundary", "missed", "spurious"):
        assert f'<section id="{anchor}">' in errors
    assert errors.count('<div class="pair">') >= sum(report["errors"].values()) // 2
    assert "outline: 3px solid" in errors and "<script" not in errors


def test_view_shows_each_score_on_hover_escaped(docs_file, tmp_path):
    hostile = {**_span("h2", "Berlin", "LOC"), "label": 'LOC" onmouseover="alert(1)'}
    spans = _jsonl(tmp_path / "spans.jsonl", [_span("h2", "Siemens", "ORG"), hostile])
    out = tmp_path / "view.html"
    assert _run(["view", str(spans), "--docs", str(docs_file), "-o", str(out)]).exit_code == 0
    page = out.read_text(encoding="utf-8")
    assert 'title="score 0.990"' in page  # the score on hover; the label is drawn beside it
    assert 'onmouseover="' not in page and "LOC&quot; onmouseover=&quot;alert(1)" in page


def test_plot_takes_a_metrics_file_or_default_and_axes_read_percent(tiny_model, tmp_path):
    from annotator.models import DEFAULT_METRICS
    from annotator.records import percent
    from annotator.views.figures import _percent_ticks

    out = tmp_path / "curves.png"
    drawn = _run(["plot", str(tiny_model.parent / "metrics.json"), "-o", str(out)])
    assert drawn.exit_code == 0 and drawn.stdout == ""  # the path is a log line: on stderr
    assert _png_size(out) == (1000, 800)
    assert _run(["plot", "default"]).exit_code == 2  # -o is needed
    packaged = _run(["plot", "default", "-o", str(out)])
    assert packaged.exit_code == (0 if DEFAULT_METRICS.exists() else 1), packaged.output
    assert "Traceback" not in packaged.output
    assert _percent_ticks().format_pct(0.64, 1) == "64%" and percent(0.6412) == "64.12%"

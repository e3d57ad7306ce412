import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotator.cli import cli
from annotator.errors import AnnotatorError
from annotator.pipeline import Annotator

ROOT = Path(__file__).parents[1]
DOCS = [
    {"id": "d1", "text": "John Smith works for Siemens in Berlin .", "lang": "en"},
    {"id": "d2", "text": "Prices rose sharply last week .", "lang": "en"},
    {
        "id": 3,
        "text": "Angela Merkel arrived in Tokyo on Friday . "
        "Maria Garcia works for Toyota in Paris .",
    },
    {"text": "", "lang": "xx"},
]


@pytest.fixture(scope="module")
def annotator(tiny_model) -> Annotator:
    return Annotator(str(tiny_model), device="cpu")


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _run(args, annotator=None, **kwargs):
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kwargs)


def test_jsonl_documents_layout_keeps_order_fields_and_exact_offsets(tiny_model, tmp_path):
    source = _jsonl(tmp_path / "docs.jsonl", DOCS)
    result = _run(
        ["annotate", str(source), "-m", str(tiny_model), "-o", str(tmp_path / "out.jsonl")]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [l["doc_id"] for l in lines] == ["d1", "d2", "3", f"{source}:4"]
    assert lines[0]["lang"] == "en" and lines[0]["text"] == DOCS[0]["text"]
    assert lines[1]["entities"] == [] and lines[3]["entities"] == []
    assert [(l["source"], l["source_row"]) for l in lines] == [
        (str(source), n) for n in (1, 2, 3, 4)
    ]
    assert len({l["run_id"] for l in lines}) == 1 and len(lines[0]["run_id"]) == 32
    assert len(lines[0]["model_sha"]) == 12
    found = {(e["entity_text"], e["label"]) for e in lines[0]["entities"]}
    assert {("John Smith", "PER"), ("Siemens", "ORG"), ("Berlin", "LOC")} <= found
    for line in lines:
        for entity in line["entities"]:
            assert set(entity) == {
                "start_char",
                "end_char",
                "entity_text",
                "label",
                "score",
                "sentence",
            }
            assert line["text"][entity["start_char"] : entity["end_char"]] == entity["entity_text"]
    assert {e["sentence"] for e in lines[2]["entities"]} == {0, 1}
    assert "4 documents" in result.output and "0 skipped" in result.output


def test_parquet_spans_schema_metadata_and_duckdb(tiny_model, tmp_path):
    import duckdb

    source = _jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "entities.parquet"
    result = _run(["annotate", str(source), "-m", str(tiny_model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert [(f.name, str(f.type), f.nullable) for f in table.schema] == [
        ("doc_id", "string", False),
        ("sentence", "int32", False),
        ("start_char", "int64", False),
        ("end_char", "int64", False),
        ("entity_text", "string", False),
        ("label", "dictionary<values=string, indices=int32, ordered=0>", False),
        ("score", "float", False),
        ("source", "string", False),
        ("source_row", "int64", False),
        ("run_id", "string", False),
        ("model_sha", "string", True),
    ]
    meta = json.loads(pq.read_schema(out).metadata[b"annotator"])
    assert meta["schema_version"] == 2 and meta["started"]
    assert set(table.column("run_id").to_pylist()) == {meta["run_id"]}
    assert set(table.column("model_sha").to_pylist()) == {meta["model_sha256"][:12]}
    assert meta["model_sha256"] and meta["annotator_version"] and "sentencizer" in meta["splitter"]
    assert meta["options"]["batch_size"] == 32
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    rows = duckdb.sql(
        f"SELECT label, count(*) AS n FROM '{out}' GROUP BY label ORDER BY label"
    ).fetchall()
    assert dict(rows)["PER"] >= 3
    per_doc = dict(duckdb.sql(f"SELECT doc_id, count(*) FROM '{out}' GROUP BY doc_id").fetchall())
    assert "d2" not in per_doc and per_doc["d1"] >= 3
    texts = {d.get("id", None): d["text"] for d in DOCS}
    for doc_id, start, end, text in duckdb.sql(
        f"SELECT doc_id, start_char, end_char, entity_text FROM '{out}'"  # no quoting needed
    ).fetchall():
        key = int(doc_id) if doc_id == "3" else doc_id
        assert texts[key][start:end] == text


def test_parquet_documents_layout_keeps_documents_without_entities(tiny_model, tmp_path):
    source = _jsonl(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "docs.parquet"
    assert (
        _run(
            [
                "annotate",
                str(source),
                "-m",
                str(tiny_model),
                "-o",
                str(out),
                "--layout",
                "documents",
            ]
        ).exit_code
        == 0
    )
    table = pq.read_table(out).to_pylist()
    assert [r["doc_id"] for r in table] == ["d1", "d2", "3", f"{source}:4"]
    assert table[1]["entities"] == []
    assert not any(f.nullable for f in pq.read_schema(out) if f.name != "model_sha")


def test_text_folders_globs_and_compressed_inputs(tiny_model, tmp_path):
    import zstandard

    folder = tmp_path / "letters"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Dear Anna Berg , greetings from Oslo .\n")
    (folder / "sub" / "b.txt").write_text("Peter Brown works for Airbus in Madrid .\n")
    with gzip.open(tmp_path / "more.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"id": "gz", "text": "Li Wei arrived in Cairo on Friday ."}) + "\n")
    (tmp_path / "more.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(
            (
                json.dumps({"id": "zst", "text": "Emma Stone works for Nestle in Rome ."}) + "\n"
            ).encode()
        )
    )
    result = _run(
        [
            "annotate",
            str(folder),
            str(tmp_path / "more.jsonl.*"),
            "-m",
            str(tiny_model),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--drop-fields",
        ]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [l["doc_id"] for l in lines] == ["a.txt", "sub/b.txt", "gz", "zst"]  # in the folder
    fixed = {"doc_id", "entities", "source", "source_row", "run_id", "model_sha"}
    assert all(set(l) == fixed for l in lines)
    assert ("Peter Brown", "PER") in {(e["entity_text"], e["label"]) for e in lines[1]["entities"]}


def test_parquet_input_is_read_by_column_names(tiny_model, tmp_path):
    import pyarrow as pa

    pq.write_table(
        pa.table({"doc": ["p1", "p2"], "body": [DOCS[0]["text"], DOCS[1]["text"]]}),
        tmp_path / "in.parquet",
    )
    result = _run(
        [
            "annotate",
            str(tmp_path / "in.parquet"),
            "--text-field",
            "body",
            "--id-field",
            "doc",
            "-m",
            str(tiny_model),
            "--layout",
            "spans",
        ]
    )
    rows = [json.loads(l) for l in result.stdout.splitlines()]
    assert {r["doc_id"] for r in rows} == {"p1"} and rows[0]["source_row"] == 0
    missing = _run(["annotate", str(tmp_path / "in.parquet"), "-m", str(tiny_model)])
    assert missing.exit_code == 1 and "no column 'text'" in missing.output


BAD = [
    (b'{"id": "ok1", "text": "John Smith works for Siemens ."}\n', None),
    (b'{"id": "broken", "text": \n', "invalid JSON"),
    (b'{"id": "notext"}\n', "no 'text' field"),
    (b'{"id": "num", "text": 42}\n', "is int, not a string"),
    (b'{"id": "bytes", "text": "caf\xe9"}\n', "not valid UTF-8"),
    (b"[1, 2]\n", "not an object"),
    (b'{"id": "ok2", "text": "Anna Berg lives in Oslo ."}\n', None),
]


def test_bad_records_fail_fast_with_source_and_line(tiny_model, tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"".join(line for line, _ in BAD))
    out = tmp_path / "out.jsonl"
    out.write_text("previous results\n")
    result = _run(["annotate", str(source), "-m", str(tiny_model), "-o", str(out)])
    assert result.exit_code == 1
    assert f"{source}:2: invalid JSON" in result.output and "Traceback" not in result.output
    assert out.read_text() == "previous results\n"  # never half-written under the final name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_skipped_records_are_reported_and_nothing_is_lost(tiny_model, tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"".join(line for line, _ in BAD))
    errors = tmp_path / "errors.jsonl"
    result = _run(
        [
            "annotate",
            str(source),
            "-m",
            str(tiny_model),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--on-error",
            "skip",
            "--errors",
            str(errors),
        ]
    )
    assert result.exit_code == 3
    written = [json.loads(l)["doc_id"] for l in (tmp_path / "o.jsonl").read_text().splitlines()]
    reported = [json.loads(l) for l in errors.read_text().splitlines()]
    assert written == ["ok1", "ok2"]
    assert [r["row"] for r in reported] == [2, 3, 4, 5, 6]
    for report, (_, reason) in zip(reported, BAD[1:-1]):
        assert reason in report["reason"] and report["source"] == str(source)
    assert len(written) + len(reported) == len(BAD)
    assert "5 skipped" in result.output


def test_undecodable_text_file_and_missing_input(tiny_model, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 in Paris".encode("latin-1"))
    result = _run(["annotate", str(tmp_path / "latin1.txt"), "-m", str(tiny_model)])
    assert result.exit_code == 1 and "not valid UTF-8" in result.output
    result = _run(["annotate", str(tmp_path / "nope.jsonl"), "-m", str(tiny_model)])
    assert result.exit_code == 2 and "nope.jsonl: no such file" in result.output


def test_model_errors_are_one_clear_message(tmp_path):
    (tmp_path / "notamodel.pt").write_text("hello")
    for model, message, code in [
        (str(tmp_path / "missing.pt"), "no such model file", 2),  # a bad value: a usage error
        (str(tmp_path / "notamodel.pt"), "cannot load file", 1),
    ]:
        result = _run(["annotate", "-m", model], input="{}\n")
        assert (
            result.exit_code == code
            and message in result.output
            and "Traceback" not in result.output
        )


def test_labels_and_min_score_filter(tiny_model, tmp_path):
    source = _jsonl(tmp_path / "docs.jsonl", DOCS[:3])
    only = _run(
        ["annotate", str(source), "-m", str(tiny_model), "--labels", "PER", "--layout", "spans"]
    )
    labels = {json.loads(l)["label"] for l in only.stdout.splitlines()}
    assert labels == {"PER"}
    strict = _run(
        ["annotate", str(source), "-m", str(tiny_model), "--min-score", "1.01", "--layout", "spans"]
    )
    assert strict.exit_code == 2 and "1.01 is not in the range" in strict.output
    unknown = _run(["annotate", str(source), "-m", str(tiny_model), "--labels", "FOO"])
    assert unknown.exit_code == 2 and "FOO" in unknown.output  # a usage error


def test_huge_document_and_long_sentences_are_cut(annotator):
    text = "John Smith works for Siemens in Berlin " * 40_000  # 1.6M chars, one "sentence"
    from annotator.segmentation import Segmenter

    sentences = next(Segmenter(max_sentence_tokens=100).split([text]))
    assert max(len(s) for s in sentences) <= 100
    assert sum(len(s) for s in sentences) == 7 * 40_000
    for sentence in sentences[::500]:
        assert [text[a:b] for a, b in zip(sentence.starts, sentence.ends)] == sentence.tokens


NOISE = st.lists(
    st.sampled_from(
        [
            "\r\n",
            "\t",
            "   ",
            "\u00a0",
            "e\u0301",
            "😀",
            "𝔘𝔫𝔦",
            "naïve",
            "  \n\n",
            "Zoë",
            "—",
            "'s",
            "...",
            "(",
            ")",
            "\u200b",
            "x",
        ]
    ),
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=NOISE, after=NOISE)
def test_offsets_are_exact_on_adversarial_text(annotator, before, after):
    core = "John Smith works for Siemens in Berlin ."
    prefix = " ".join(before) + " . "
    text = prefix + core + " " + "".join(after)
    entities = annotator.annotate_text(text)
    for entity in entities:
        assert text[entity.start : entity.end] == entity.text
        assert entity.text == entity.text.strip() and entity.end > entity.start
    found = {(e.start, e.label) for e in entities}
    assert (len(prefix), "PER") in found
    assert (len(prefix) + core.index("Berlin"), "LOC") in found


def test_tag_prints_the_tagged_string(tiny_model):
    result = _run(["tag", "John Smith works for Siemens in Berlin .", "-m", str(tiny_model)])
    assert result.exit_code == 0
    assert result.stdout.strip() == "John Smith <PER> works for Siemens <ORG> in Berlin <LOC> ."


def test_python_api(annotator):
    results = list(annotator.annotate_texts(["Anna Berg lives in Oslo .", "", "Prices rose ."]))
    assert [[(e.text, e.label) for e in r] for r in results] == [
        [("Anna Berg", "PER"), ("Oslo", "LOC")],
        [],
        [],
    ]
    assert annotator.labels == ["LOC", "MISC", "ORG", "PER"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "annotator", *args]


def test_stdin_to_stdout_pipeline_streams_before_input_ends(tiny_model):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        _cli("annotate", "-m", str(tiny_model)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        process.stdin.write(b'{"id": "first", "text": "Anna Berg lives in Oslo ."}\n')
        process.stdin.flush()
        line = process.stdout.readline()  # arrives while stdin is still open
        assert json.loads(line)["doc_id"] == "first"
        process.stdin.write(b'{"id": "second", "text": "Prices rose ."}\n')
        process.stdin.close()
        rest = process.stdout.read()
        assert [json.loads(l)["doc_id"] for l in rest.splitlines()] == ["second"]
        assert process.wait(timeout=60) == 0
        assert b"2 documents" in process.stderr.read()
    finally:
        process.kill()


def test_head_ends_the_pipeline_quietly(tiny_model, tmp_path):
    source = _jsonl(
        tmp_path / "many.jsonl", [{"id": i, "text": DOCS[0]["text"]} for i in range(3000)]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = " ".join(_cli("annotate", str(source), "-m", str(tiny_model))) + " | head -3"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=env, timeout=300
    )
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_splitter_process_matches_splitting_in_line(tiny_model, monkeypatch):
    """Sentences split in the child process give the same entities as splitting in line, over
    many chunks (the next one split while this one is tagged), and an abandoned run's unread
    replies do not leak into the next run."""
    import annotator.pipeline as pipeline
    from tests.synthetic import sentences

    monkeypatch.setattr(pipeline, "CHUNK_CHARS", 2_000)
    texts = [" ".join(" ".join(t for t, _ in s) for s in sentences(3, seed=i)) for i in range(120)]
    in_line = Annotator(str(tiny_model), device="cpu", split_process=False)
    assert in_line.splitter is None
    expected = [[e.to_dict() for e in found] for found in in_line.annotate_texts(texts)]
    assert sum(map(len, expected)) > 100

    child = Annotator(str(tiny_model), device="cpu", split_process=True)
    assert child.splitter is not None
    abandoned = child.annotate_texts(texts)
    next(abandoned)  # leaves requests in flight
    assert [[e.to_dict() for e in found] for found in child.annotate_texts(texts)] == expected

    child.splitter._process.kill()  # a crashed splitter is one clear error, not a hang
    child.splitter._process.wait()
    with pytest.raises(AnnotatorError, match="sentence-splitting process stopped"):
        list(child.annotate_texts(texts[:3]))

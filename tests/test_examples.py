"""Every workflow in examples/ runs, as a user would run it from the repository root."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def workdir(tmp_path, tiny_model):
    """A copy of examples/ to run in, with the tiny tagger standing in for the default model."""
    shutil.copytree(
        ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("output")
    )
    env = {
        **os.environ,
        "ANNOTATOR_MODEL": str(tiny_model),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    return tmp_path, env


def _run(command, cwd, env, timeout=600):
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed (make tools)")
def test_unix_pipeline_with_jq(workdir):
    cwd, env = workdir
    out = _run(["bash", "examples/pipeline.sh"], cwd, env).stdout.splitlines()
    people = [json.loads(line) for line in out if line.startswith("{")]
    ids = [
        json.loads(line)["id"]
        for line in (cwd / "examples/documents.jsonl").read_text().splitlines()
    ]
    assert [p["doc_id"] for p in people] == ids
    counts = out[
        out.index("# entities by type") + 1 : out.index(
            "# stdin works too: the first three organisations"
        )
    ]
    assert counts and all(line.split()[1] in {"PER", "ORG", "LOC", "MISC"} for line in counts)
    assert len(out) - out.index("# stdin works too: the first three organisations") - 1 <= 3


def test_duckdb_queries_over_the_parquet_output(workdir):
    import duckdb

    cwd, env = workdir
    (cwd / "examples/output").mkdir()
    _run(
        [
            "annotator",
            "annotate",
            "examples/documents.jsonl",
            "examples/letters",
            "-o",
            "examples/output/entities.parquet",
        ],
        cwd,
        env,
    )
    os.chdir(cwd)
    try:
        statements = [
            s for s in (cwd / "examples/queries.sql").read_text().split(";") if "SELECT" in s
        ]
        top, where, per_doc = (duckdb.sql(s).fetchall() for s in statements)
    finally:
        os.chdir(ROOT)
    assert len(where) == 5 and len({row[5] for row in where}) == 1 and len(where[0][6]) == 12
    assert top and all(label in {"PER", "ORG", "LOC", "MISC"} and n >= 1 for label, _, n in top)
    assert (
        sum(n for _, n, _ in per_doc)
        == duckdb.sql(f"SELECT count(*) FROM '{cwd}/examples/output/entities.parquet'").fetchall()[
            0
        ][0]
    )


def test_python_api_example(workdir):
    cwd, env = workdir
    out = _run([sys.executable, "examples/api.py"], cwd, env).stdout.splitlines()
    assert out[0].startswith("[") and out[1].startswith("[")
    assert out[2].startswith("3 documents,") and (cwd / "examples/output/letters.parquet").exists()


def test_training_example_with_a_short_budget(workdir, synthetic_corpus, conllpp_dir):
    cwd, env = workdir
    env = {
        **env,
        "CONLLPP": str(conllpp_dir),
        "EPOCHS": "1",
        "TRAIN_DIR": str(synthetic_corpus),
        "OUT": "runs/example",
    }
    out = _run(["bash", "examples/train_conllpp.sh"], cwd, env).stdout
    assert "14987" in out and "micro avg" in out
    scores = json.loads((cwd / "runs/example/test-scores.json").read_text())
    assert scores["sentences"] == 3684


def test_tutorial_script_runs_end_to_end(workdir, synthetic_corpus, conllpp_dir):
    cwd, env = workdir
    env = {
        **env,
        "TUTORIAL_SOURCE": str(conllpp_dir),
        "TUTORIAL_EPOCHS": "1",
        "TUTORIAL_TRAIN_DIR": str(synthetic_corpus),
        "TUTORIAL_OUT": "runs/tutorial",
    }
    out = _run([sys.executable, "examples/tutorial.py"], cwd, env).stdout
    assert "Train" in out and "14987" in out and "3684" in out and "3466" in out
    assert "micro avg" in out and "My name is Eugene" in out
    assert (cwd / "runs/tutorial/letters.parquet").exists()


def test_demo_output_shows_annotated_lines(workdir):
    cwd, env = workdir
    (cwd / "examples/output").mkdir()
    _run(
        [
            "annotator",
            "annotate",
            "examples/documents.jsonl",
            "-o",
            "examples/output/entities.jsonl",
        ],
        cwd,
        env,
    )
    shown = _run(
        [sys.executable, "examples/show.py", "examples/output/entities.jsonl", "2"], cwd, env
    ).stdout
    assert shown.startswith("[news-001] BERLIN") and shown.count("\n\n") == 2

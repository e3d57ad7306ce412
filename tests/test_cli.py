"""The first hour: instant answers, one line per user error, exit 2 for every usage error."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.io.readers import expand_inputs, read_documents

ROOT = Path(__file__).parents[1]
COMMANDS = [
    [],
    ["corpus"],
    ["corpus", "fetch"],
    ["corpus", "stats"],
    ["train"],
    ["evaluate"],
    ["adapt"],
    ["plot"],
    ["view"],
    ["annotate"],
    ["tag"],
    ["info"],
    ["bench"],
]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "annotator")
def test_help_is_instant_and_has_an_example(command):
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "annotator", *command, "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "Example:" in result.stdout
    assert seconds < 5, f"{' '.join(command)} --help took {seconds:.1f} s"  # ~0.3 s when quiet


def test_usage_errors_import_no_flair_or_torch():
    """In a fresh interpreter, through CliRunner: parsing and refusing never loads Flair."""
    script = """
import sys
from click.testing import CliRunner
from annotator.cli import cli
codes = [
    CliRunner().invoke(cli, args).exit_code
    for args in (
        ["annotate", "--bogus"],
        ["annotate", "examples/documents.jsonl", "--shard", "4/4"],
        ["annotate", "examples/documents.jsonl", "-o", "no/such/folder/x.parquet"],
        ["annotate", "examples/documents.jsonl", "--format", "parquet"],
        ["annotate", "missing.jsonl"],
        ["annotate", "examples/documents.jsonl", "-m", "examples/smal"],
        ["annotate", "examples/no-such-*.jsonl"],
        ["annotate", "examples/documents.jsonl", "-o", "examples/documents.jsonl"],
        ["train", "examples", "-o", "x", "--max-epochs", "0"],
        ["train", "examples", "-o", "x", "--config", "pyproject.toml"],
        ["view", "examples/documents.jsonl", "-o", "no/such/folder/v.html"],
    )
]
print(codes, "flair" in sys.modules, "torch" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert result.stdout.split() == [
        "[2,",
        "2,",
        "2,",
        "2,",
        "2,",
        "2,",
        "2,",
        "2,",
        "2,",
        "2,",
        "2]",
        "False",
        "False",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", ".", "-o", "x", "--max-epochs", "0"], "0 is not in the range x>=1"),
        (["train", ".", "-o", "x", "--batch-size", "0"], "0 is not in the range x>=1"),
        (["train", ".", "-o", "x", "--learning-rate", "0"], "--learning-rate"),
        (["annotate", "--min-score", "1.5"], "1.5 is not in the range 0<=x<=1"),
        (["annotate", "--batch-size", "0"], "--batch-size"),
        (["annotate", "--part-size", "0"], "--part-size"),
        (["annotate", "--workers", "0"], "--workers"),
        (["annotate", "--html-limit", "0"], "--html-limit"),
        (["annotate", "--max-sentence-tokens", "0"], "--max-sentence-tokens"),
        (["evaluate", "m", ".", "--batch-size", "0"], "--batch-size"),
        (["view", "README.md", "-o", "v.html", "--limit", "0"], "--limit"),
        (["annotate", "README.md", "-o", "out.csv"], "cannot tell the output format"),
        (["annotate", "README.md", "--resume"], "--resume needs a directory output"),
        (["annotate", "README.md", "--errors", "no/such/dir/e.jsonl"], "no such directory"),
        (["annotate", "README.md", "--html", "no/such/dir/p.html"], "no such directory"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_missing_model_path_fails_at_once_and_default_names_the_packaged_model(tmp_path):
    from annotator.models import DEFAULT_MODEL, looks_like_path, resolve_model

    (tmp_path / "runs").mkdir()
    os.chdir(tmp_path)
    try:
        for name in ("runs/smal", "./model", "model.pt", "a/b/c", "~/x.pt", str(tmp_path / "m")):
            assert looks_like_path(name), name
            started = time.perf_counter()
            result = CliRunner().invoke(cli, ["tag", "hello", "-m", name])
            assert result.exit_code == 2 and "no such model file or folder" in result.output
            assert time.perf_counter() - started < 2
        assert not looks_like_path("flair/ner-english") and not looks_like_path("ner-fast")
    finally:
        os.chdir(ROOT)
    assert resolve_model("default") == resolve_model(None) == DEFAULT_MODEL


def test_folders_take_known_suffixes_and_text_ids_are_relative_to_the_root(tmp_path, caplog):
    root = tmp_path / "bbc"
    (root / "tech").mkdir(parents=True)
    (root / "tech" / "001.txt").write_text("Apple opened in Paris.")
    (root / "tech" / "002.txt.gz").write_bytes(b"")
    (root / "notes.md").write_text("# notes")
    (root / "logo.png").write_bytes(b"\x89PNG")
    with caplog.at_level(logging.INFO, logger="annotator"):
        files = expand_inputs([str(root)])
    assert [Path(f).name for f in files] == ["001.txt", "002.txt.gz"]
    assert "skipped 2 files by suffix (.md 1, .png 1); --include-suffix" in caplog.text
    assert [Path(f).name for f in expand_inputs([str(root)], include=("md",))] == [
        "notes.md",
        "001.txt",
        "002.txt.gz",
    ]
    os.chdir(tmp_path)
    try:
        ids = {
            tuple(d.id for d in read_documents(expand_inputs([given])))
            for given in ("bbc", str(root), "./bbc/", f"{tmp_path}/bbc")
        }
        assert ids == {("tech/001.txt", "tech/002.txt.gz")}
        assert [d.id for d in read_documents(expand_inputs(["bbc/tech/001.txt"]))] == ["001.txt"]
        assert [d.id for d in read_documents(expand_inputs(["bbc/*/001.txt"]))] == ["tech/001.txt"]
    finally:
        os.chdir(ROOT)


def test_annotate_with_include_suffix(tiny_model, tmp_path):
    folder = tmp_path / "letters"
    folder.mkdir()
    (folder / "a.txt").write_text("Anna Berg lives in Oslo .")
    (folder / "b.md").write_text("John Smith works for Siemens .")
    out = tmp_path / "o.jsonl"
    args = ["annotate", str(folder), "-m", str(tiny_model), "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "skipped 1 file by suffix (.md 1)" in result.output
    assert [json.loads(l)["doc_id"] for l in out.read_text().splitlines()] == ["a.txt"]
    result = CliRunner().invoke(cli, [*args, "--include-suffix", ".md"])
    assert [json.loads(l)["doc_id"] for l in out.read_text().splitlines()] == ["a.txt", "b.md"]
    result = CliRunner().invoke(cli, args)  # the suffix was this run's, not the next one's
    assert [json.loads(l)["doc_id"] for l in out.read_text().splitlines()] == ["a.txt"]


def test_annotator_is_a_context_manager_that_ends_its_splitter(tiny_model):
    from annotator import Annotator

    with Annotator(str(tiny_model), device="cpu", split_process=True) as annotator:
        process = annotator.splitter._process
        assert [e.label for e in annotator.annotate_text("Anna Berg lives in Oslo .")]
    assert annotator.splitter is None and process.poll() is not None


def test_command_lists_are_not_cut_and_train_options_say_their_defaults():
    for group in ([], ["corpus"]):
        listing = CliRunner().invoke(cli, [*group, "--help"]).output
        assert "..." not in listing.split("Commands:")[1]
    train = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for text in ("--max-epochs", "[default: 50", "--batch-size", "--learning-rate", "--seed"):
        assert text in train
    assert train.count("[default:") >= 5

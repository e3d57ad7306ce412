"""Nothing lost, ever: damaged compressed input, endless records, failing side outputs, bad
configs, closed streams and signals each end in a clear message and the documented exit."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.io.readers import ReaderOptions, expand_inputs, read_documents
from annotator.records import Document, RecordError

zstandard = pytest.importorskip("zstandard")


def _jsonl(count: int) -> bytes:
    return b"".join(
        json.dumps({"id": i, "text": f"Obama visited Berlin {i}."}).encode() + b"\n"
        for i in range(count)
    )


# --- damaged compressed input ------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_zstd_file_is_a_bad_record_where_it_broke_in_files_folders_and_stdin(
    tmp_path, monkeypatch, keep
):
    data = zstandard.ZstdCompressor().compress(_jsonl(20000))
    data = data[: int(len(data) * keep)]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "t.jsonl.zst").write_bytes(data)
    *documents, broken = read_documents(expand_inputs([str(folder)]))
    assert all(isinstance(d, Document) for d in documents) and 0 < len(documents) < 20000
    assert isinstance(broken, RecordError) and broken.row == len(documents) + 1
    assert "ended before" in broken.reason

    from types import SimpleNamespace

    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(data)))
    *from_stdin, broken = read_documents(["-"])
    assert len(from_stdin) == len(documents) and isinstance(broken, RecordError)


def test_whole_zstd_files_of_several_frames_are_read_whole(tmp_path):
    compress = zstandard.ZstdCompressor().compress
    (tmp_path / "a.jsonl.zst").write_bytes(compress(_jsonl(50)) + compress(_jsonl(30)))
    (tmp_path / "empty.jsonl.zst").write_bytes(b"")
    records = list(
        read_documents([str(tmp_path / "a.jsonl.zst"), str(tmp_path / "empty.jsonl.zst")])
    )
    assert len(records) == 80 and all(isinstance(r, Document) for r in records)


def test_damaged_zstd_is_a_bad_record_that_on_error_skip_skips(tmp_path, tiny_model):
    damaged = tmp_path / "d.jsonl.zst"
    damaged.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 8)
    [record] = read_documents([str(damaged)])
    assert isinstance(record, RecordError) and record.row == 0 and "zstd" in record.reason
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl(2))
    out = tmp_path / "o.jsonl"
    args = ["annotate", str(damaged), str(good), "-m", str(tiny_model), "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--on-error", "skip"])
    assert result.exit_code == 3 and "Traceback" not in result.output, result.output
    assert len(out.read_text().splitlines()) == 2
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output


# --- the record size limit ---------------------------------------------------------------------


def test_a_record_over_the_size_limit_is_a_bad_record_and_the_rest_is_read(tmp_path):
    import gzip

    options = ReaderOptions(max_record_bytes=1000)
    lines = [b'{"text": "short"}', b'{"text": "' + b"x" * 5000 + b'"}', b'{"text": "after"}']
    for name, data in (
        ("a.jsonl", b"\n".join(lines)),
        ("a.jsonl.gz", gzip.compress(b"\n".join(lines))),
    ):
        (tmp_path / name).write_bytes(data)
        records = list(read_documents([str(tmp_path / name)], options))
        assert [type(r).__name__ for r in records] == ["Document", "RecordError", "Document"]
        assert records[1].row == 2 and "1,000 bytes" in records[1].reason
        assert records[2].text == "after"
    (tmp_path / "big.txt").write_text("word " * 1000)
    [record] = read_documents([str(tmp_path / "big.txt")], options)
    assert isinstance(record, RecordError) and "--max-record-bytes" in record.reason

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["small", "y" * 2000]}), tmp_path / "p.parquet")
    small, big = read_documents([str(tmp_path / "p.parquet")], options)
    assert isinstance(small, Document) and isinstance(big, RecordError) and big.row == 1


def test_endless_zero_bytes_end_cleanly_in_bounded_memory(tmp_path, monkeypatch):
    """/dev/zero as stdin (JSON lines) or as a text file: one bad record, then the end."""
    import resource
    from types import SimpleNamespace

    options = ReaderOptions(max_record_bytes=1 << 20)
    with open("/dev/zero", "rb") as zeros:
        monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=zeros))
        [record] = read_documents(["-"], options)
        assert isinstance(record, RecordError) and "NUL bytes" in record.reason
    [record] = read_documents(["/dev/zero"], ReaderOptions(max_record_bytes=1 << 20))
    assert isinstance(record, RecordError) and "larger than" in record.reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 1_500_000  # KiB


# --- train config ranges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_epochs = -5", "max_epochs must be at least 1, not -5"),
        ("max_epochs = 0", "max_epochs must be at least 1, not 0"),
        ("learning_rate = nan", "learning_rate must be a finite number above 0, not nan"),
        ("learning_rate = -1.0", "learning_rate must be a finite number above 0, not -1.0"),
        ("learning_rate = inf", "learning_rate must be a finite number above 0, not inf"),
        ("hidden_size = true", "hidden_size must be int, not True"),
        ("dropout = true", "dropout must be float, not True"),
        ("hidden_size = 100000000", "hidden_size must be from 1 to 8192, not 100000000"),
        ("hidden_size = 0", "hidden_size must be from 1 to 8192, not 0"),
        ("batch_size = 0", "batch_size must be at least 1, not 0"),
        ("dropout = 2.0", "dropout must be at least 0 and below 1, not 2.0"),
        ("locked_dropout = -0.1", "locked_dropout must be at least 0 and below 1, not -0.1"),
        ("seed = -1", "seed must be from 0 to 4294967295, not -1"),
        ("anneal_factor = 5.0", "anneal_factor must be above 0 and below 1, not 5.0"),
        ("patience = -1", "patience must be at least 0, not -1"),
        ("min_learning_rate = -1.0", "min_learning_rate must be a finite number at least 0"),
        ("rnn_layers = 0", "rnn_layers must be from 1 to 16, not 0"),
        ("word_embedding_dim = 0", "word_embedding_dim must be from 1 to 8192, not 0"),
        ("anneal_after = [0, 3]", "anneal_after must be a list of integers of at least 1"),
    ],
)
def test_train_config_values_are_range_checked_when_read(tmp_path, setting, message):
    from annotator.errors import UsageError
    from annotator.training.config import resolve_config

    toml = tmp_path / "bad.toml"
    toml.write_text(setting + "\n")
    with pytest.raises(UsageError) as raised:
        resolve_config(None, toml)
    assert f"{toml}: {message}" in str(raised.value)


def test_train_with_a_bad_config_value_exits_2_in_one_line_before_reading_the_corpus(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("learning_rate = nan\n")
    result = CliRunner().invoke(
        cli, ["train", str(tmp_path), "-o", str(tmp_path / "m"), "--config", str(toml)]
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "learning_rate" in result.output and "nan" in result.output


# --- standard streams --------------------------------------------------------------------------


def _annotator(*args: str, redirect: str) -> subprocess.CompletedProcess:
    """`python -m annotator ARGS` with a shell redirection (`>&-`, `<&-`, `>/dev/full`)."""
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "annotator", *args))
    return subprocess.run(
        f"exec {command} {redirect}",
        shell=True,
        capture_output="2>" not in redirect,
        text=True,
        stdin=None if "<" in redirect else subprocess.DEVNULL,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("redirect", "message"),
    [
        (">&-", "standard output: it is closed"),
        (">/dev/full", "standard output: No space left on device"),
    ],
)
def test_a_closed_or_full_stdout_is_one_line_and_exit_1(redirect, message):
    result = _annotator("--version", redirect=redirect)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [f"Error: cannot write to {message}"]


def test_a_closed_stdin_is_one_line_and_a_closed_stderr_no_failure(tiny_model, tmp_path):
    out = tmp_path / "o.jsonl"
    result = _annotator("annotate", "-", "-m", str(tiny_model), "-o", str(out), redirect="<&-")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot read standard input")
    assert _annotator("--help", redirect="2>&- >/dev/null").returncode == 0


# --- evaluation, spaCy pipelines ---------------------------------------------------------------


def test_evaluate_on_gold_types_the_model_lacks_is_one_line_naming_them(tiny_model, tmp_path):
    rows = "Obama NNP B-NP B-PER\nvisited VBD B-VP O\nBerlin NNP B-NP B-GPE\n. . O O\n\n"
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.txt").write_text(rows)
    result = CliRunner().invoke(cli, ["evaluate", str(tiny_model), str(tmp_path)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "GPE (1 spans)" in result.output and "PER" in result.output


def test_a_spacy_pipeline_not_installed_is_one_line_before_any_child_starts(tmp_path, capfd):
    from annotator.errors import UsageError
    from annotator.segmentation import SplitterProcess

    with pytest.raises(UsageError, match="no spaCy pipeline of that name is installed"):
        SplitterProcess("en_core_web_zz")
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(1))
    args = [str(source), "-o", str(tmp_path / "o.jsonl"), "--spacy-model", "en_core_web_zz"]
    result = CliRunner().invoke(cli, ["annotate", *args])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in capfd.readouterr().err


def test_escape_sequences_in_path_arguments_never_reach_the_terminal_raw(tmp_path):
    """As a terminal gets it (Click strips escapes only from what is not a terminal)."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(1))
    cases = [
        ["annotate", str(source), "-o", f"{tmp_path}/nodir\x1b[2J/o.jsonl"],
        ["annotate", f"{tmp_path}/\x1b[2Jmissing.jsonl", "-o", str(tmp_path / "o.jsonl")],
        ["view", f"{tmp_path}/\x1b[2J.jsonl"],
        ["evaluate", "default", f"{tmp_path}/\x1b[2J"],
    ]
    for args in cases:
        result = CliRunner().invoke(cli, args, color=True)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
        assert "\x1b" not in result.output and "\\x1b[2J" in result.output, result.output


# --- side outputs ------------------------------------------------------------------------------


def test_an_output_folder_that_cannot_be_written_is_refused_before_anything_loads(tmp_path):
    """/proc refuses new files even to root; a read-only folder does too."""
    spans = tmp_path / "spans.jsonl"
    spans.write_text('{"doc_id": "a", "entities": [], "text": "x"}\n')
    result = CliRunner().invoke(cli, ["view", str(spans), "-o", "/proc/page.html"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "-o /proc/page.html: cannot write in /proc" in result.output


def test_a_failed_write_is_one_error_and_never_a_half_file_under_the_final_name(
    tmp_path, monkeypatch
):
    from annotator.errors import AnnotatorError
    from annotator.files import write_atomically

    target = tmp_path / "page.html"
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(AnnotatorError, match=f"cannot write {target}: No space left on device$"):
        write_atomically(target, "<html>" + "x" * 1000)
    assert list(tmp_path.iterdir()) == []


# --- directory runs: resume verifies, a failed manifest write counts what it holds --------------


def _directory_run(tiny_model, source: Path, out: Path, *extra: str):
    args = ["annotate", str(source), "-m", str(tiny_model), "-o", f"{out}/", "--format", "jsonl"]
    return CliRunner().invoke(cli, [*args, "--part-size", "10", *extra])


def _ids_in_parts(out: Path) -> list[str]:
    [manifest] = [json.loads(p.read_text()) for p in out.glob("*manifest.json")]
    return [
        json.loads(line)["doc_id"]
        for part in manifest["parts"]
        for line in (out / part["file"]).read_text().splitlines()
    ]


def test_resume_verifies_each_part_and_redoes_a_missing_or_damaged_one(tiny_model, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(30))
    out = tmp_path / "out"
    assert _directory_run(tiny_model, source, out).exit_code == 0
    whole = sorted(_ids_in_parts(out))
    assert len(whole) == 30
    part = out / "part-00001.jsonl"
    part.write_bytes(part.read_bytes()[:-40])  # a damaged (cut) part of a finished run
    result = _directory_run(tiny_model, source, out, "--resume")
    assert result.exit_code == 0 and "part-00001.jsonl" in result.output, result.output
    assert sorted(_ids_in_parts(out)) == whole
    (out / "part-00000.jsonl").unlink()  # a missing part
    result = _directory_run(tiny_model, source, out, "--resume")
    assert result.exit_code == 0 and "part-00000.jsonl" in result.output, result.output
    assert sorted(_ids_in_parts(out)) == whole


def test_a_failed_manifest_write_counts_the_parts_the_manifest_really_holds(
    tiny_model, tmp_path, monkeypatch
):
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(30))
    real, saves = os.replace, []

    def fail_the_fourth(src, dst):
        if Path(dst).name == "manifest.json":
            saves.append(dst)
            if len(saves) == 4:  # the start, parts 0 and 1: the third part's record fails
                raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_the_fourth)
    out = tmp_path / "out"
    result = _directory_run(tiny_model, source, out)
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output
    held = len(json.loads((out / "manifest.json").read_text())["parts"])
    assert held == 2 and f"The {held} part(s) recorded" in result.output


def test_an_interrupted_workers_run_leaves_no_temporary_parts_and_no_tracker_warning(
    tiny_model, tmp_path
):
    import signal
    import time

    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(3000))
    out = tmp_path / "out"
    args = [str(source), "-m", str(tiny_model), "-o", f"{out}/", "--format", "jsonl"]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "annotator",
            "annotate",
            *args,
            "--workers",
            "2",
            "--part-size",
            "5",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while len(list(out.glob("shard-*-part-*.jsonl"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # as Ctrl-C would, to the parent only
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr
    assert "resource_tracker" not in stderr and "Traceback" not in stderr, stderr
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


# --- Parquet to a pipe -------------------------------------------------------------------------


def test_parquet_to_a_fifo_or_a_pipe_descriptor_is_written_front_to_back(tmp_path):
    import threading

    import pyarrow.parquet as pq

    from annotator.io.writers import ParquetWriter
    from annotator.records import Entity

    document = Document(id="a", text="Obama visited Berlin.", source="in", row=1)
    entity = Entity(0, 5, "Obama", "PER", 0.9, 0)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read, write = os.pipe()
    link = tmp_path / "stdout-like"
    link.symlink_to(f"/proc/self/fd/{write}")  # as -o /dev/stdout is

    def drain(source, got: list[bytes]) -> None:
        with source() as stream:
            got.append(stream.read())

    for target, source in ((fifo, lambda: open(fifo, "rb")), (link, lambda: os.fdopen(read, "rb"))):
        got: list[bytes] = []
        reader = threading.Thread(target=drain, args=(source, got))
        reader.start()
        writer = ParquetWriter(str(target), "spans", {})
        writer.write(document, [entity])
        writer.close()
        if target == link:
            os.close(write)
        reader.join(timeout=30)
        table = pq.read_table(io.BytesIO(got[0]))
        assert table.column("entity_text").to_pylist() == ["Obama"]
    assert fifo.is_fifo() and link.is_symlink()  # written through, never replaced


def test_the_record_size_limit_is_an_annotate_option(tiny_model, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(3) + b'{"text": "' + b"x" * 300 + b'"}\n')
    out, errors = tmp_path / "o.jsonl", tmp_path / "errors.jsonl"
    args = [str(source), "-m", str(tiny_model), "-o", str(out), "--errors", str(errors)]
    result = CliRunner().invoke(
        cli, ["annotate", *args, "--max-record-bytes", "200", "--on-error", "skip"]
    )
    assert result.exit_code == 3, result.output
    assert len(out.read_text().splitlines()) == 3
    [error] = [json.loads(line) for line in errors.read_text().splitlines()]
    assert error["row"] == 4 and "200 bytes" in error["reason"]


def test_a_failing_errors_file_is_one_line_and_never_ends_mid_line(tiny_model, tmp_path):
    """--errors on a full device, and on a file that stops growing (RLIMIT_FSIZE: a quota)."""
    import resource
    import signal

    source = tmp_path / "in.jsonl"
    source.write_bytes(_jsonl(1) + b"not json\n" * 20)
    args = ["annotate", str(source), "-m", str(tiny_model), "-o", "/dev/null", "--on-error", "skip"]
    result = CliRunner().invoke(cli, [*args, "--errors", "/dev/full"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "cannot write /dev/full: No space left on device" in result.output
    errors = tmp_path / "errors.jsonl"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (500, limit[1]))
    try:
        result = CliRunner().invoke(cli, [*args, "--errors", str(errors)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, previous)
    assert result.exit_code == 1 and "File too large" in result.output, result.output
    text = errors.read_text()
    assert text.endswith("\n") and all(json.loads(line)["row"] for line in text.splitlines())


# --- Ray ---------------------------------------------------------------------------------------


def test_starting_ray_keeps_the_commands_sigterm_and_sigint_handlers():
    """ray.init puts in its own SIGTERM handler (a stack dump and exit 15)."""
    import signal
    from types import SimpleNamespace

    from annotator.runs.ray import _connect

    def init(**settings):
        signal.signal(signal.SIGTERM, lambda *_: os._exit(15))
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    def ours(*_):
        raise AssertionError("not called")

    before = signal.signal(signal.SIGTERM, ours)
    try:
        fake = SimpleNamespace(is_initialized=lambda: False, init=init)
        assert _connect(fake, None) is True
        assert signal.getsignal(signal.SIGTERM) is ours
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)

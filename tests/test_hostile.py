"""A hostile world (issue #15): no bad record stops a run, no output path is clobbered, no two
runs share a folder, no worker outlives its run."""

from __future__ import annotations

import gzip
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.files import AtomicFile
from annotator.io.readers import expand_inputs, read_documents
from annotator.pipeline import AnnotateOptions, Annotator, annotate
from annotator.records import RecordError
from tests.test_runs import (
    SENTENCES,
    _docs,
    _lines,
    assert_same_documents,
    part_files,
    read_manifests,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def annotator(tiny_model, single_thread):
    """With a splitter process, where a lone surrogate used to crash the child."""
    annotator = Annotator(str(tiny_model), device="cpu", split_process=True)
    yield annotator
    annotator.splitter.close()


def _run(*args: str):
    return CliRunner().invoke(cli, ["annotate", *args], catch_exceptions=False)


def _write(path: Path, lines: list[bytes | str]) -> Path:
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return path


# --- bad records -------------------------------------------------------------------------------


def test_reader_reports_surrogates_deep_nesting_huge_numbers_and_where_a_gz_broke(tmp_path):
    source = _write(
        tmp_path / "bad.jsonl",
        [
            r'{"id": "a", "text": "bad \ud800 London"}',  # 1: lone surrogate in the text
            r'{"id": "b\udc00", "text": "Paris"}',  # 2: ... in the id
            r'{"text": "Paris", "meta": {"k\ud800": 1}}',  # 3: ... in a passed-through key
            '{"text": "x", "f": ' + "[" * 5000 + "]" * 5000 + "}",  # 4: nested 5,000 deep
            '{"text": "x", "n": ' + "1" * 5000 + "}",  # 5: an int too long for Python
            '{"text": "abc',  # 6: unterminated string
            r'{"text": "fine \ud83d\ude00 pair"}',  # 7: a valid surrogate pair: a document
        ],
    )
    records = list(read_documents([str(source)]))
    errors = {r.row: r.reason for r in records if isinstance(r, RecordError)}
    assert sorted(errors) == [1, 2, 3, 4, 5, 6]
    assert "lone surrogate (\\ud800)" in errors[1] and "(\\udc00)" in errors[2]
    assert "nested too deeply" in errors[4]
    assert "at at" not in errors[6] and "starting at column 10" in errors[6]
    assert records[-1].text == "fine \U0001f600 pair"

    data = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(5000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    *documents, broken = read_documents([str(tmp_path / "cut.jsonl.gz")])
    assert isinstance(broken, RecordError) and broken.row == len(documents) + 1 > 1


def test_unreadable_folders_and_files_are_reported_not_skipped(tmp_path, monkeypatch):
    (tmp_path / "ok").mkdir()
    _write(tmp_path / "ok" / "a.jsonl", ['{"text": "Paris"}'])
    locked = tmp_path / "locked"
    locked.mkdir()
    _write(locked / "b.jsonl", ['{"text": "Paris"}'])
    if os.geteuid() == 0:  # root reads anything: the kernel's refusal, simulated
        real = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        files = expand_inputs([str(tmp_path)])
        records = list(read_documents(files))
    finally:
        locked.chmod(0o755)
    assert [type(r).__name__ for r in records] == ["RecordError", "Document"]
    assert records[0].source == str(locked) and "cannot read this folder" in records[0].reason


def _hostile_lines(rng: random.Random) -> list[bytes]:
    """Arbitrary bytes and arbitrary JSON: surrogates, deep nesting, huge values, wrong types,
    control characters, and some ordinary documents between them."""
    sentence = rng.choice(SENTENCES)
    control = "".join(chr(rng.choice([0, 7, 8, 27, 127, 0x85, 0x2028])) for _ in range(3))
    texts = [
        sentence,
        f"{sentence} \ud800 {sentence}",
        "\udfff",
        control + sentence + "\x1b]0;title\x07",
        "",
        " \n\t " * rng.randint(1, 50),
        sentence * rng.randint(50, 300),
        "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(40)).replace("\ud800", ""),
    ]
    values = [
        None,
        True,
        1.5e308,
        -(10**30),
        [],
        {"x": [sentence]},
        "\ud834",
        "\x1b[31mred",
        "[" * 3,
    ]
    lines: list[bytes] = []
    for _ in range(rng.randint(5, 12)):
        kind = rng.randrange(8)
        if kind == 0:  # arbitrary bytes (newlines removed: one record a line)
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 60)))
            lines.append(raw.replace(b"\n", b" ").replace(b"\r", b" ") or b"x")
        elif kind == 1:  # deep nesting
            depth = rng.choice([10, 900, 5000])
            lines.append(b'{"text": "a", "f": ' + b"[" * depth + b"]" * depth + b"}")
        elif kind == 2:  # wrong types
            record = {"text": rng.choice(values), "id": rng.choice(values)}
            lines.append(json.dumps(record, ensure_ascii=True).encode())
        elif kind == 3:  # huge numbers
            lines.append(b'{"text": "x", "n": ' + b"9" * rng.choice([10, 4400, 20000]) + b"}")
        else:  # documents with hostile text and fields
            record = {
                "text": rng.choice(texts),
                rng.choice(["k", "\udc80", "\x1b"]): rng.choice(values),
            }
            if rng.random() < 0.5:
                record["id"] = rng.choice([sentence, "\x1b[2J", "\ud800", 7])
            lines.append(json.dumps(record, ensure_ascii=True).encode())
    return lines


def test_fuzz_every_record_is_written_or_reported_exactly_once(annotator, tmp_path):
    for example in range(40):
        rng = random.Random(example)
        source = _write(tmp_path / f"in-{example}.jsonl", _hostile_lines(rng))
        rows = [n for n, l in enumerate(source.read_bytes().split(b"\n")[:-1], 1) if l.strip()]
        out, errors = tmp_path / f"out-{example}.jsonl", tmp_path / f"errors-{example}.jsonl"
        options = AnnotateOptions(
            on_error="skip", errors=str(errors), id_field="no such field", drop_fields=True
        )
        summary = annotate([str(source)], str(out), options, annotator=annotator)
        written = [int(line["doc_id"].rsplit(":", 1)[1]) for line in _lines([out])]
        reported = [line["row"] for line in _lines([errors])]
        assert sorted(written + reported) == rows, example
        assert (summary.documents, summary.skipped) == (len(written), len(reported))


def test_fuzz_input_through_the_command_line_ends_0_or_3_without_a_traceback(tiny_model, tmp_path):
    lines = [line for seed in range(100, 110) for line in _hostile_lines(random.Random(seed))]
    source = _write(tmp_path / "hostile.jsonl", lines)
    for args in (["--format", "jsonl"], ["--format", "parquet", "--layout", "documents"]):
        out = tmp_path / ("out." + args[1])
        result = _run(
            str(source), "-m", str(tiny_model), "-o", str(out), "--on-error", "skip", *args
        )
        assert result.exit_code == 3 and "Traceback" not in result.output, result.output
        assert "\x1b" not in result.output  # escape sequences are shown escaped, never raw
        assert f"{len(lines)} documents" not in result.output
        failed = _run(str(source), "-m", str(tiny_model), "-o", str(out), *args)
        assert failed.exit_code == 1 and len(failed.output.strip().splitlines()) == 1


def test_duplicate_ids_are_warned_about_once_with_count_and_examples(tiny_model, tmp_path):
    source = _write(
        tmp_path / "dup.jsonl", [json.dumps({"id": f"d{i % 3}", "text": "Paris"}) for i in range(8)]
    )
    result = _run(str(source), "-m", str(tiny_model), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 0
    [warning] = [line for line in result.output.splitlines() if "more than once" in line]
    assert "3 document id(s)" in warning and "5 repeats" in warning and "'d0'" in warning


# --- output paths ------------------------------------------------------------------------------


def test_output_to_a_fifo_or_through_a_symlink_never_replaces_it(tiny_model, tmp_path):
    source = _write(tmp_path / "in.jsonl", ['{"id": "a", "text": "John Smith lives in Paris ."}'])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    result = _run(str(source), "-m", str(tiny_model), "-o", str(fifo))  # a stream: JSONL
    assert result.exit_code == 0, result.output
    assert json.loads(reader.communicate(timeout=30)[0])["doc_id"] == "a"
    assert fifo.is_fifo()  # still a FIFO, not a regular file

    target = tmp_path / "target.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert _run(str(source), "-m", str(tiny_model), "-o", str(link)).exit_code == 0
    assert link.is_symlink() and json.loads(target.read_text())["doc_id"] == "a"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_link_to_a_descriptor_or_a_device_is_written_in_place(tiny_model, tmp_path):
    source = _write(tmp_path / "in.jsonl", ['{"id": "a", "text": "John Smith lives in Paris ."}'])
    read, write = os.pipe()
    link = tmp_path / "out.jsonl"
    link.symlink_to(f"/proc/self/fd/{write}")  # as -o /dev/stdout is
    try:
        result = _run(str(source), "-m", str(tiny_model), "-o", str(link))
    finally:
        os.close(write)
    with os.fdopen(read) as pipe:
        assert json.loads(pipe.read())["doc_id"] == "a"
    assert result.exit_code == 0 and link.is_symlink()
    if os.geteuid() != 0:
        return
    full = tmp_path / "full"
    os.mknod(full, 0o600 | stat.S_IFCHR, os.makedev(1, 7))  # /dev/full: every write fails
    result = _run(str(source), "-m", str(tiny_model), "-o", str(full), "--format", "jsonl")
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert full.is_char_device() and "Traceback" not in result.output


def test_an_output_never_overwrites_an_input_or_another_output(tmp_path):
    """Refused before a model loads (exit 2), whatever the spelling: the input's own path, a
    link to it, a detour through `..`; `--errors` or `--html` on an input; two outputs on one
    path; an output where a folder input's next read would take it for input."""
    source = _write(tmp_path / "in.jsonl", ['{"id": "a", "text": "Paris"}'])
    (tmp_path / "link.jsonl").symlink_to(source)
    folder = tmp_path / "docs"
    folder.mkdir()
    _write(folder / "a.jsonl", ['{"id": "b", "text": "Rome"}'])
    other = str(tmp_path / "out.jsonl")
    cases = [
        ([str(source), "-o", str(source)], "-o {} is an input"),
        ([str(source), "-o", str(tmp_path / "link.jsonl")], "is an input"),
        ([str(source), "-o", f"{tmp_path}/../{tmp_path.name}/in.jsonl"], "is an input"),
        ([str(tmp_path / "*.jsonl"), "-o", str(source)], "is an input"),
        ([str(source), "--errors", str(source), "-o", other], "--errors {} is an input"),
        ([str(source), "--html", str(source), "-o", other], "--html {} is an input"),
        ([str(source), "--errors", other, "-o", other], "is also -o's path"),
        ([str(folder), "-o", str(folder / "out.parquet")], "inside the input folder"),
        ([str(folder), "-o", f"{folder}/parts/"], "inside the input folder"),
        (["-", "-"], "- (stdin) is given more than once"),
        ([str(source), "-o", other, "--min-score", "nan"], "nan is not a number"),
        ([str(source), "-o", ""], "-o is an empty path"),
        ([str(folder), "-o", str(folder)], "inside the input folder"),  # the folder itself
    ]
    for args, message in cases:
        result = _run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message.format(source) in result.output, (args, result.output)
    assert source.read_text() == '{"id": "a", "text": "Paris"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "in.jsonl", "link.jsonl"]
    assert [p.name for p in folder.iterdir()] == ["a.jsonl"]
    result = CliRunner().invoke(cli, ["view", str(source), "-o", str(source)])
    assert result.exit_code == 2 and "is an input" in result.output
    assert source.read_text() == '{"id": "a", "text": "Paris"}\n'


def test_hidden_places_in_an_input_folder_are_no_overlap_and_odd_names_reach_json(tmp_path):
    """The folder read skips hidden paths, so an output there is allowed; a manifest naming a
    file whose name is not UTF-8 is still written (escaped)."""
    from annotator.files import write_json_atomically
    from annotator.io.readers import check_outputs_apart

    folder = tmp_path / "docs"
    folder.mkdir()
    check_outputs_apart([str(folder)], {"-o": str(folder / ".runs" / "out.jsonl")})
    check_outputs_apart([str(folder)], {"-o": str(tmp_path / "out") + "/"})  # a sibling
    data = {"inputs": [os.fsdecode(b"caf\xe9.txt")]}
    written = write_json_atomically(tmp_path / "manifest.json", data)
    assert json.loads(written.read_text(encoding="utf-8")) == data


def test_compressed_stdin_is_recognised_however_slowly_its_first_bytes_come(monkeypatch):
    import io
    from types import SimpleNamespace

    class Trickle(io.RawIOBase):  # a pipe that gives one byte a read
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            chunk, self.data = self.data[:1], self.data[1:]
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = gzip.compress(b'{"id": "a", "text": "Paris"}\n')
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BufferedReader(Trickle(data), 1)))
    (record,) = read_documents(["-"])
    assert (record.id, record.text) == ("a", "Paris")


def test_bom_boolean_ids_and_undecodable_file_names_are_handled_per_record(tmp_path):
    """A UTF-8 byte-order mark opens a file, it is not text; `true` is no id; a file name that
    is not UTF-8 cannot be a source or an id: a bad record, not a failed write later."""
    jsonl = _write(
        tmp_path / "bom.jsonl",
        [b'\xef\xbb\xbf{"id": "a", "text": "Paris"}', '{"id": true, "text": "Rome"}'],
    )
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfParis is big.")
    name = os.fsdecode(b"bad\xff.txt")
    (tmp_path / name).write_text("Rome")
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")  # a link to nothing
    records = list(read_documents(expand_inputs([str(jsonl), str(tmp_path)])))
    by_row = [(type(r).__name__, r.row) for r in records]
    assert by_row[:2] == [("Document", 1), ("RecordError", 2)]
    assert records[0].text == "Paris" and "field 'id' is bool" in records[1].reason
    texts = {r.id: r.text for r in records if not isinstance(r, RecordError)}
    assert texts["bom.txt"] == "Paris is big."
    bad = [r for r in records if isinstance(r, RecordError) and r.source.endswith(name)]
    assert len(bad) == 1 and "name is not valid UTF-8" in bad[0].reason
    gone = [r for r in records if isinstance(r, RecordError) and r.source.endswith("gone.jsonl")]
    assert len(gone) == 1 and "No such file" in gone[0].reason


def test_input_fields_give_way_to_the_tools_keys_and_stdin_may_be_compressed(tiny_model):
    """An input field named `doc_id` or `source` does not replace the tool's (JSONL as in
    Parquet); gzip data on stdin is recognised by its first bytes."""
    line = b'{"id": "a", "text": "John Smith lives in Paris .", "doc_id": "zzz", "source": "x"}\n'
    result = subprocess.run(  # the real stdin: a buffered pipe
        [sys.executable, "-m", "annotator", "annotate", "-m", str(tiny_model), "--device", "cpu"],
        input=gzip.compress(line),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    record = json.loads(result.stdout)
    assert (record["doc_id"], record["source"], record["source_row"]) == ("a", "-", 1)


def test_stale_temporary_files_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.jsonl.{dead.pid}.tmp"
    stale.write_text("half")
    live = tmp_path / f".out.jsonl.{os.getppid()}.tmp"
    live.write_text("someone else's, still running")
    with AtomicFile(tmp_path / "out.jsonl") as target:
        target.tmp.write_text("whole\n")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "out.jsonl").read_text() == "whole\n"


def test_write_error_is_one_line_keeps_the_previous_output_and_leaves_no_temp(tiny_model, tmp_path):
    source = _docs(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # "File too large" after 4 KiB
    try:
        result = _run(str(source), "-m", str(tiny_model), "-o", str(out))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: cannot write {out}: File too large")
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def _start(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "annotator", "annotate", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_sigint_and_sigterm_exit_130_and_143_with_one_line_and_no_temp(tiny_model, tmp_path):
    source = _docs(tmp_path / "in.jsonl", 1000)
    runs = {}
    for name, sig in (("int", signal.SIGINT), ("term", signal.SIGTERM)):
        folder = tmp_path / name
        folder.mkdir()
        runs[sig] = (
            folder,
            _start([str(source), "-m", str(tiny_model), "-o", f"{folder}/o.jsonl"]),
        )
    for sig, (folder, process) in runs.items():
        deadline = time.monotonic() + 120
        while not any(p.name.endswith(".tmp") for p in folder.iterdir()):
            assert process.poll() is None and time.monotonic() < deadline, "ended too soon"
            time.sleep(0.05)
        process.send_signal(sig)
    for sig, (folder, process) in runs.items():
        process.wait(timeout=60)
        stderr = process.stderr.read().decode()
        assert process.returncode == (130 if sig == signal.SIGINT else 143), stderr
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert list(folder.iterdir()) == []


# --- directories: one run at a time, no worker left behind, resume over changed input ---------


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tiny_model, tmp_path):
    from annotator.runs.directory import lock_directory
    from annotator.runs.shards import Shard

    source = _docs(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out"
    args = [str(source), "-m", str(tiny_model), "-o", f"{out}/", "--resume"]
    lock = lock_directory(out, Shard())  # another run, as the kernel sees it
    try:
        refused = _run(*args)
        workers = _run(*args, "--workers", "2")
    finally:
        lock.release()
    for result in (refused, workers):
        assert result.exit_code == 1, result.output
        assert "in use by another annotate run" in result.output
        assert f"pid {os.getpid()}" in result.output
    assert not (out / "manifest.json").exists()  # the refused run touched nothing
    assert _run(*args).exit_code == 0  # exactly one proceeds


def test_two_runs_started_together_on_one_folder_exactly_one_proceeds(tiny_model, tmp_path):
    source = _docs(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out"
    args = [str(source), "-m", str(tiny_model), "-o", f"{out}/", "--resume", "--part-size", "50"]
    args += ["--format", "jsonl"]
    first, second = _start(args), _start(args)
    codes = sorted([first.wait(timeout=300), second.wait(timeout=300)])
    messages = first.stderr.read().decode() + second.stderr.read().decode()
    assert codes == [0, 1], messages
    assert "in use by another annotate run (pid" in messages
    assert len(_lines(part_files(out))) == 300


def test_resume_over_changed_input_is_refused(tiny_model, tmp_path):
    source = _docs(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out"
    args = [str(source), "-m", str(tiny_model), "-o", f"{out}/", "--part-size", "10"]
    assert _run(*args).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False  # as if interrupted
    (out / "manifest.json").write_text(json.dumps(manifest))
    source.write_text('{"text": "ten new lines at the top"}\n' * 10 + source.read_text())
    result = _run(*args, "--resume")
    assert result.exit_code == 1 and "input changed since the run started" in result.output
    assert str(source) in result.output


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def test_kill_9_of_a_workers_run_kills_its_workers_and_resume_equals_a_whole_run(
    tiny_model, tmp_path
):
    import psutil

    source = _docs(tmp_path / "in.jsonl", 2000, bad_every=97)
    common = [str(source), "-m", str(tiny_model), "--format", "jsonl", "--on-error", "skip"]
    assert _run(*common, "-o", str(tmp_path / "whole.jsonl")).exit_code == 3
    out = tmp_path / "out"
    args = [*common, "-o", f"{out}/", "--workers", "2", "--part-size", "10", "--device", "cpu"]
    process = _start(args)
    rng = random.Random(os.getpid())
    wanted, deadline = rng.randint(1, 4), time.monotonic() + 240
    while len(list(out.glob("shard-*-part-*.jsonl"))) < wanted:
        assert process.poll() is None and time.monotonic() < deadline, "ended too soon"
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.1))
    children = _descendants(process.pid)
    assert len(children) >= 2  # the workers (and their splitters)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1)
    alive = [
        pid
        for pid in children
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
    assert not all(m["complete"] for m in read_manifests(out)), "the run ended before the kill"
    resumed = _start([*args, "--resume"])
    assert resumed.wait(timeout=300) in (0, 3), resumed.stderr.read().decode()
    assert_same_documents(
        _lines(part_files(out)), _lines([tmp_path / "whole.jsonl"]), ordered=False
    )


# --- pages: nothing from the input becomes markup -------------------------------------------

EVIL = "EVIL"
HOSTILE = [
    f'<meta http-equiv="refresh" content="0;url=https://{EVIL}.example/">',
    f'<form action="https://{EVIL}.example/"><input name="{EVIL}"></form>',
    f'"><script>alert("{EVIL}")</script>',
    f"<base href=https://{EVIL}.example/>",
    f"javascript:{EVIL}()",
    f"' onmouseover='{EVIL}()",
    f"\x1b]8;;https://{EVIL}.example\x07{EVIL}",
]


class _Elements:
    """Every element, attribute and attribute value an HTML parser finds in a page."""

    def __init__(self, page: str) -> None:
        from html.parser import HTMLParser

        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        found = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                found.tags.append(tag)
                found.attributes.extend((name, value or "") for name, value in attrs)

            handle_startendtag = handle_starttag

        Parser(convert_charrefs=True).feed(page)


def _assert_inert(page: str) -> None:
    found = _Elements(page)
    assert EVIL not in " ".join(found.tags)
    assert not any(EVIL in name or EVIL in value for name, value in found.attributes)
    assert not {"script", "form", "input", "base", "a", "iframe", "img", "link"} & set(found.tags)
    metas = [dict(a for a in found.attributes if a) for _ in range(found.tags.count("meta"))]
    assert found.tags.count("meta") == 2  # charset and the policy: nothing else
    assert "form-action 'none'; base-uri 'none'" in page and "default-src 'none'" in page
    assert not any("url(" in v or "http" in v for _, v in found.attributes), metas
    assert EVIL in page  # it is there, as text


def test_view_of_hostile_ids_text_labels_and_entity_fields_is_inert(tmp_path):
    records = []
    for number, hostile in enumerate(HOSTILE):
        text = f"{hostile} Paris {hostile}"
        start = len(hostile) + 1
        entity = {
            "start": start,
            "end": start + 5,
            "text": "Paris",
            "label": hostile if number % 2 else "LOC",
            "score": hostile if number % 3 == 0 else 0.5,
            "params": {"bg": hostile, "text": hostile, "label": hostile},
            "kb_id": hostile,
            "kb_url": f"https://{EVIL}.example/",
        }
        records.append({"id": hostile, "text": text, "entities": [entity]})
    records.append(
        {"id": "offsets", "text": "abc", "entities": [{"start": "0", "end": [3], "label": EVIL}]}
    )
    source = tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    page = tmp_path / "view.html"
    result = CliRunner().invoke(cli, ["view", str(source), "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    _assert_inert(page.read_text())
    assert page.read_text().count('class="entity"') == len(HOSTILE)


def test_annotate_html_page_of_hostile_documents_is_inert(tiny_model, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": h, "text": f"{h} John Smith works in Paris . {h}"}) + "\n"
            for h in HOSTILE
        )
    )
    page = tmp_path / "page.html"
    result = _run(
        str(source), "-m", str(tiny_model), "-o", str(tmp_path / "o.jsonl"), "--html", str(page)
    )
    assert result.exit_code == 0, result.output
    _assert_inert(page.read_text())

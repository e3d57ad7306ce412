"""Directory runs, resume after kill -9, shards and worker processes (annotator.runs)."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.runs.shards import Shard, shard_of
from tests.synthetic import sentences

ROOT = Path(__file__).parents[1]
SENTENCES = [" ".join(token for token, _ in s) for s in sentences(400, seed=11)]


def _docs(path: Path, count: int, bad_every: int = 0, seed: int = 0) -> Path:
    """`count` JSONL documents of 1-4 synthetic sentences; every `bad_every`-th line is broken."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        lines.append(
            json.dumps(
                {
                    "id": f"doc-{i}",
                    "text": " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 4))),
                    "n": i,
                }
            )
        )
        if bad_every and i % bad_every == bad_every - 1:
            lines.append('{"id": "broken", "text": ')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(*args: str):
    return CliRunner().invoke(cli, ["annotate", *args], catch_exceptions=False)


def _lines(paths) -> list[dict]:
    return [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()]


def _key(entity: dict) -> tuple:
    return tuple(entity[k] for k in ("start_char", "end_char", "entity_text", "label", "sentence"))


def assert_same_documents(got: list[dict], expected: list[dict], ordered: bool = True) -> None:
    """Same documents with the same entities; scores may differ in the last digits, because
    the documents were batched differently (another process, shard or resume point)."""
    if not ordered:
        got = sorted(got, key=lambda d: d["doc_id"])
        expected = sorted(expected, key=lambda d: d["doc_id"])
    assert [d["doc_id"] for d in got] == [d["doc_id"] for d in expected]
    for a, b in zip(got, expected):  # run_id: each run has its own
        assert {k: v for k, v in a.items() if k not in ("entities", "run_id")} == {
            k: v for k, v in b.items() if k not in ("entities", "run_id")
        }
        assert [_key(e) for e in a["entities"]] == [_key(e) for e in b["entities"]], a["doc_id"]
        assert all(
            abs(x["score"] - y["score"]) < 1e-4 for x, y in zip(a["entities"], b["entities"])
        )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _docs(tmp_path_factory.mktemp("runs") / "docs.jsonl", 600, bad_every=97)


@pytest.fixture(scope="module")
def reference(tiny_model, corpus) -> list[dict]:
    """An uninterrupted single-file run: what every other kind of run must reproduce."""
    out = corpus.parent / "reference.jsonl"
    result = _run(
        str(corpus),
        "-m",
        str(tiny_model),
        "-o",
        str(out),
        "--on-error",
        "skip",
        "--errors",
        str(corpus.parent / "reference-errors.jsonl"),
    )
    assert result.exit_code == 3, result.output
    return _lines([out])


# --- shards ---------------------------------------------------------------------------------


def test_shards_cover_every_document_exactly_once_and_are_stable():
    ids = [f"doc-{i}" for i in range(3000)] + ["", "ü", "a:1"]
    for count in (1, 2, 3, 7):
        owners = Counter()
        for k in range(count):
            Shard.parse(f"{k}/{count}")
            owners.update(i for i in ids if shard_of(i, count) == k or count == 1)
        assert set(owners) == set(ids) and set(owners.values()) == {1}
    # the same on every machine and Python (blake2b, not hash()): pinned values
    assert [shard_of(f"doc-{i}", 8) for i in range(8)] == [0, 1, 2, 2, 3, 3, 6, 5]
    # workers split a shard into sub-shards that together hold exactly its documents
    parent = Shard(1, 3)
    inside = {i for i in ids if shard_of(i, 3) == 1}
    subs = [{i for i in ids if shard_of(i, s.count) == s.index} for s in parent.split(4)]
    assert set().union(*subs) == inside and sum(map(len, subs)) == len(inside)
    for bad in ("3/3", "1/0", "-1/2", "x", "1-2"):
        with pytest.raises(Exception, match="0 <= K < N"):
            Shard.parse(bad)


def test_shard_outputs_together_equal_the_whole_run(tiny_model, corpus, reference, tmp_path):
    parts = []
    for k in range(2):
        out = tmp_path / f"shard{k}.jsonl"
        result = _run(
            str(corpus),
            "-m",
            str(tiny_model),
            "-o",
            str(out),
            "--shard",
            f"{k}/2",
            "--on-error",
            "skip",
            "--errors",
            str(tmp_path / f"errors{k}.jsonl"),
        )
        assert result.exit_code in (0, 3), result.output
        parts.append(_lines([out]))
        assert parts[-1] and len(parts[-1]) < len(reference)
    assert_same_documents([d for p in parts for d in p], reference, ordered=False)
    errors = _lines(tmp_path / f"errors{k}.jsonl" for k in range(2))
    assert len(errors) == len(_lines([corpus.parent / "reference-errors.jsonl"]))
    result = _run(
        str(corpus), "-m", str(tiny_model), "-o", str(tmp_path / "x.jsonl"), "--shard", "2/2"
    )
    assert result.exit_code == 2 and "0 <= K < N" in result.output  # a usage error


# --- directory runs ---------------------------------------------------------------------------


def test_directory_run_writes_parts_and_a_manifest_and_refuses_mismatches(
    tiny_model, corpus, reference, tmp_path
):
    out = tmp_path / "out"
    args = [
        str(corpus),
        "-m",
        str(tiny_model),
        "-o",
        f"{out}/",
        "--format",
        "jsonl",
        "--part-size",
        "250",
        "--on-error",
        "skip",
        "--errors",
        str(tmp_path / "errors.jsonl"),
    ]
    result = _run(*args)
    assert result.exit_code == 3, result.output
    [manifest] = read_manifests(out)
    assert manifest["complete"] and [p["documents"] for p in manifest["parts"]] == [250, 250, 100]
    assert manifest["settings"]["model_sha256"] and manifest["skipped"] == 6
    assert sorted(p.name for p in out.iterdir() if p.name != ".annotator.lock") == [
        "manifest.json",
        "part-00000.jsonl",
        "part-00001.jsonl",
        "part-00002.jsonl",
    ]
    assert_same_documents(_lines(part_files(out)), reference)

    again = _run(*args)  # a finished run is not overwritten by accident
    assert again.exit_code == 1 and "use --resume" in again.output
    done = _run(*args, "--resume")
    assert done.exit_code == 0 and "0 documents" in done.output
    other = _run(*args, "--resume", "--labels", "PER", "--layout", "spans")
    assert other.exit_code == 1
    assert (
        "other settings" in other.output and "labels" in other.output and "layout" in other.output
    )
    sharded = _run(*args, "--shard", "0/2")
    assert sharded.exit_code == 1 and "split into 1 shard" in sharded.output
    assert _run(str(corpus), "-o", str(tmp_path / "f.jsonl"), "--resume").exit_code == 2
    assert (
        "directory output"
        in _run(str(corpus), "-o", str(tmp_path / "f.jsonl"), "--workers", "2").output
    )


def read_manifests(directory) -> list[dict]:
    """Every manifest in a run directory (one, or one per shard), by name."""
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(Path(directory).glob("*manifest.json"))
    ]


def part_files(directory) -> list[Path]:
    """The committed part files of a directory run, shard by shard, in order."""
    return [
        Path(directory) / part["file"]
        for manifest in read_manifests(directory)
        for part in manifest["parts"]
    ]


class _Crash(BaseException):
    """Stands in for a kill at an exact point (BaseException: nothing may catch it)."""


def test_crash_between_part_rename_and_manifest_leaves_an_orphan_that_resume_removes(
    tiny_model, corpus, reference, tmp_path, monkeypatch
):
    from annotator.runs import directory as runs

    out = tmp_path / "out"
    args = [
        str(corpus),
        "-m",
        str(tiny_model),
        "-o",
        f"{out}/",
        "--format",
        "jsonl",
        "--part-size",
        "150",
        "--on-error",
        "skip",
        "--errors",
        str(tmp_path / "errors.jsonl"),
    ]
    real_save, calls = runs.Manifest.save, []

    def save(self, data=None):
        calls.append(1)
        if len(calls) == 3:  # the initial manifest, part 0, then part 1's: die before it
            raise _Crash()
        real_save(self, data)

    monkeypatch.setattr(runs.Manifest, "save", save)
    with pytest.raises(_Crash):
        _run(*args)
    monkeypatch.setattr(runs.Manifest, "save", real_save)
    # the orphan waits under its pending name: no listing shows it as a part
    assert (out / ".part-00001.jsonl.pending").exists() and not (out / "part-00001.jsonl").exists()
    assert len(read_manifests(out)[0]["parts"]) == 1
    result = _run(*args, "--resume")
    assert result.exit_code == 3, result.output
    assert_same_documents(_lines(part_files(out)), reference)
    assert len(_lines([tmp_path / "errors.jsonl"])) == 6  # each bad record reported once


def test_disk_full_is_a_clear_error_and_keeps_committed_parts(
    tiny_model, corpus, reference, tmp_path, monkeypatch
):
    from annotator.runs import directory as runs

    out = tmp_path / "out"
    args = [
        str(corpus),
        "-m",
        str(tiny_model),
        "-o",
        f"{out}/",
        "--format",
        "parquet",
        "--layout",
        "documents",
        "--part-size",
        "200",
        "--on-error",
        "skip",
    ]
    real_open, opened = runs.open_writer, []

    def open_writer(*a, **k):
        writer = real_open(*a, **k)
        opened.append(writer)
        if len(opened) == 2:

            def full(*_):
                raise OSError(errno.ENOSPC, "No space left on device")

            writer.write = full
        return writer

    monkeypatch.setattr(runs, "open_writer", open_writer)
    result = _run(*args)
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "1 part(s)" in result.output
    assert "--resume" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir() if p.name != ".annotator.lock") == [
        "manifest.json",
        "part-00000.parquet",
    ]
    monkeypatch.setattr(runs, "open_writer", real_open)
    assert _run(*args, "--resume").exit_code == 3
    rows = [r for path in part_files(out) for r in pq.read_table(path).to_pylist()]
    assert [r["doc_id"] for r in rows] == [d["doc_id"] for d in reference]


def test_unwritable_output_directory_is_a_clear_error(tiny_model, corpus, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _run(str(corpus), "-m", str(tiny_model), "-o", f"{blocker}/out/")
    assert result.exit_code == 1 and "cannot create the output directory" in result.output
    if os.geteuid() != 0:  # root writes anywhere: permissions cannot stop it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = _run(str(corpus), "-m", str(tiny_model), "-o", f"{locked}/")
        assert result.exit_code == 1 and "Permission denied" in result.output


# --- kill -9 -----------------------------------------------------------------------------------


def _parts_committed(out: Path) -> int:
    try:
        return len(read_manifests(out)[0]["parts"])
    except (IndexError, OSError, ValueError):
        return 0


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "annotator", "annotate", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """kill -9 as soon as `ready()`; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.005)
    process.kill()
    raise AssertionError("the run neither progressed nor ended")


def test_resume_after_kill_9_at_several_points_equals_an_uninterrupted_run(
    tiny_model, corpus, reference, tmp_path
):
    out = tmp_path / "out"
    errors = tmp_path / "errors.jsonl"
    args = [
        str(corpus),
        "-m",
        str(tiny_model),
        "-o",
        f"{out}/",
        "--format",
        "jsonl",
        "--part-size",
        "10",
        "--on-error",
        "skip",
        "--errors",
        str(errors),
    ]
    rng = random.Random(7)

    def after_first_commit():
        return _parts_committed(out) >= 1

    state: dict[str, float] = {}

    def mid_part():  # a random moment after this process's first commit
        if "at" not in state and _parts_committed(out) > state.setdefault(
            "base", _parts_committed(out)
        ):
            state["at"] = time.monotonic() + rng.uniform(0.01, 0.1)
        return "at" in state and time.monotonic() > state["at"]

    # (the moment between a part's rename and the manifest update is too short to hit with
    # a kill from outside: the in-process test above stops a run exactly there)
    killed = []
    for number, ready in enumerate([after_first_commit, mid_part]):
        if _kill_when(_start(args + (["--resume"] if number else [])), ready):
            killed.append(_parts_committed(out))
    assert len(killed) == 2, "the run was too quick to interrupt"
    assert 1 <= killed[0] < killed[1] < len(reference) // 10
    final = _start(args + ["--resume"])
    assert final.wait(timeout=120) == 3, final.stderr.read().decode()
    [manifest] = read_manifests(out)
    assert manifest["complete"] and manifest["skipped"] == 6
    assert sorted(
        p.name for p in out.iterdir() if not p.name.startswith(("part-", ".annotator.lock"))
    ) == ["manifest.json"]
    assert_same_documents(_lines(part_files(out)), reference)
    assert _lines([errors]) == _lines([corpus.parent / "reference-errors.jsonl"])


# --- workers ---------------------------------------------------------------------------------


def assert_same_part_rows(got: Path, expected: Path) -> None:
    """Two directory runs hold the same rows (any part layout; scores to 1e-4) and one schema."""

    def rows(folder):
        tables = [pq.read_table(p) for p in part_files(folder)]
        assert all(t.schema.equals(tables[0].schema) for t in tables)
        found = [r for t in tables for r in t.to_pylist()]
        return sorted(found, key=lambda r: (r["doc_id"], r["start_char"])), tables[0].schema

    (a, schema_a), (b, schema_b) = rows(got), rows(expected)
    assert schema_a.equals(schema_b) and len(a) == len(b)
    for x, y in zip(a, b):  # each run has its own run_id
        assert {k: v for k, v in x.items() if k not in ("score", "run_id")} == {
            k: v for k, v in y.items() if k not in ("score", "run_id")
        }
        assert abs(x["score"] - y["score"]) < 1e-4


def test_two_workers_write_the_same_rows_as_one(tiny_model, corpus, tmp_path):
    common = [
        str(corpus),
        "-m",
        str(tiny_model),
        "--format",
        "parquet",
        "--part-size",
        "150",
        "--on-error",
        "skip",
        "--device",
        "cpu",
    ]
    one = _run(*common, "-o", f"{tmp_path / 'one'}/")
    two = _run(*common, "-o", f"{tmp_path / 'two'}/", "--workers", "2")
    assert one.exit_code == two.exit_code == 3, two.output
    counts = [r.output.splitlines()[-1].split(" entities")[0] for r in (one, two)]
    assert counts[0] == counts[1] and counts[0].startswith("600 documents")
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if "manifest" in p.name) == [
        "shard-0-of-2-manifest.json",
        "shard-1-of-2-manifest.json",
    ]
    assert_same_part_rows(tmp_path / "two", tmp_path / "one")
    again = _run(*common, "-o", f"{tmp_path / 'two'}/", "--workers", "3", "--resume")
    assert again.exit_code == 1 and "split into 2 shard" in again.output


def test_ray_engine_without_ray_names_the_extra(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = _run(str(corpus), "-m", str(tiny_model), "-o", f"{tmp_path}/out/", "--backend", "ray")
    assert result.exit_code == 1 and "pip install 'annotator[ray]'" in result.output


# --- examples/ops ------------------------------------------------------------------------------


def _ops(script: str, tmp_path: Path, status: int = 0, **env: str) -> tuple[int, str]:
    """Run an examples/ops script with a stub `annotator` that records its arguments."""
    stub = tmp_path / "annotator-stub"
    stub.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\nexit {status}\n')
    stub.chmod(0o755)
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "ops" / script)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "ANNOTATOR": str(stub), **env},
    )
    args = (tmp_path / "args").read_text() if (tmp_path / "args").exists() else ""
    return result.returncode, args


def test_ops_examples_pass_resume_and_zero_based_shards(tmp_path):
    code, args = _ops(
        "slurm-array.sbatch",
        tmp_path,
        SLURM_ARRAY_TASK_ID="0",
        SLURM_ARRAY_TASK_COUNT="8",
        INPUT="in.jsonl",
        OUTPUT=f"{tmp_path}/out/",
    )
    assert code == 0 and "--shard 0/8" in args and "--resume" in args and f"{tmp_path}/out/" in args
    nightly = {"INPUT": "in.jsonl", "OUTPUT": f"{tmp_path}/night/", "LOG": f"{tmp_path}/night.log"}
    code, args = _ops("annotate-nightly.sh", tmp_path, status=3, **nightly)
    assert code == 0 and "--resume" in args and "--on-error skip" in args
    assert "skipped" in (tmp_path / "night.log").read_text()
    code, _ = _ops("annotate-nightly.sh", tmp_path, status=1, **nightly)
    assert code == 1 and "FAILED" in (tmp_path / "night.log").read_text()

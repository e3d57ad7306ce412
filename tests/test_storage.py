"""Object storage both ways: s3:// inputs streamed, s3:// directory outputs committed by their
manifest, against a real S3 server (SeaweedFS, started once per session by `object_store`)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner

from annotator.cli import cli
from tests.objectstore import READER, admin_filesystem
from tests.test_runs import _docs, _lines, assert_same_documents, part_files

ROOT = Path(__file__).parents[1]


@pytest.fixture
def s3(object_store, monkeypatch):
    """The AWS variables of the test server, for runs in this process."""
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    return object_store


def _put_folder(store, folder: Path, prefix: str) -> None:
    filesystem = admin_filesystem(store)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with filesystem.open_output_stream(f"{prefix}/{path.relative_to(folder)}") as handle:
                handle.write(path.read_bytes())


def _remote_documents(store, prefix: str) -> list[dict]:
    """The rows of a JSONL directory run in object storage, through its manifest."""
    filesystem = admin_filesystem(store)
    with filesystem.open_input_stream(f"{prefix}/manifest.json") as handle:
        manifest = json.loads(handle.read())
    assert manifest["complete"]
    rows = []
    for part in manifest["parts"]:
        with filesystem.open_input_stream(f"{prefix}/{part['file']}") as handle:
            rows.extend(json.loads(line) for line in handle.read().decode().splitlines())
    return rows


def _without_source(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "source"} for row in rows]


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory) -> Path:
    """JSONL (gzip), JSONL (zstd), Parquet and text: every reader, over a stream."""
    folder = tmp_path_factory.mktemp("s3-inputs")
    plain = _docs(folder / "plain.jsonl", 30, bad_every=13, seed=3).read_bytes()
    (folder / "plain.jsonl").unlink()
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(plain))
    (folder / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain))
    rows = [json.loads(line) for line in plain.decode().splitlines() if line.endswith("}")]
    pq.write_table(
        pa.Table.from_pylist([{"id": f"pq-{r['id']}", "text": r["text"]} for r in rows[:12]]),
        folder / "c.parquet",
    )
    (folder / "d.txt").write_text(rows[0]["text"] + "\n\n" + rows[1]["text"])
    return folder


def test_s3_input_and_output_give_the_rows_of_a_local_run(s3, tiny_model, mixed_inputs, tmp_path):
    _put_folder(s3, mixed_inputs, "tests/equal/docs")
    common = ["-m", str(tiny_model), "--format", "jsonl", "--on-error", "skip", "--part-size", "25"]
    local = CliRunner().invoke(
        cli, ["annotate", str(mixed_inputs), "-o", f"{tmp_path}/local/", *common]
    )
    assert local.exit_code == 3, local.output
    remote_run = [
        "annotate",
        "s3://tests/equal/docs/",
        "-o",
        "s3://tests/equal/entities/",
        "--resume",
        *common,
    ]
    remote = CliRunner().invoke(cli, remote_run)
    assert remote.exit_code == 3, remote.output
    got = _remote_documents(s3, "tests/equal/entities")
    assert got[0]["source"].startswith("s3://tests/equal/docs/")
    expected = _lines(part_files(tmp_path / "local"))
    assert len(expected) == 2 * 30 + 12 + 1  # two JSONL files, Parquet, one text
    assert_same_documents(_without_source(got), _without_source(expected))
    # a resume of a finished run does nothing; no secret reaches the manifest
    again = CliRunner().invoke(cli, remote_run)
    assert again.exit_code == 0 and "already complete" in again.output
    with admin_filesystem(s3).open_input_stream("tests/equal/entities/manifest.json") as handle:
        manifest = handle.read().decode()
    assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in manifest
    assert s3.env()["AWS_SECRET_ACCESS_KEY"] not in remote.output


def killed_run_args(prefix: str, model: Path) -> list[str]:
    """A run from PREFIX/in/ to PREFIX/out/ in small parts, slow enough to be killed mid-way
    (its input first, then its output: `args[3:]` are its options)."""
    return [
        f"s3://{prefix}/in/",
        "-o",
        f"s3://{prefix}/out/",
        "-m",
        str(model),
        "--format",
        "jsonl",
        "--part-size",
        "20",
        "--on-error",
        "skip",
        "--batch-size",
        "8",
    ]


def watch_commits(store, prefix: str, process, seconds: float, parts: int = 3) -> None:
    """List `prefix` many times a second while `process` writes there, until the manifest
    names `parts` parts: a listing never shows a part the manifest does not name."""
    from pyarrow import fs

    filesystem = admin_filesystem(store)
    named: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None and len(named) < parts:
        listed = {
            info.base_name
            for info in filesystem.get_file_info(fs.FileSelector(prefix, allow_not_found=True))
            if info.base_name.startswith("part-")
        }
        try:
            with filesystem.open_input_stream(f"{prefix}/manifest.json") as handle:
                named = {p["file"] for p in json.loads(handle.read())["parts"]}
        except OSError:
            named = set()
        except ValueError:  # SeaweedFS serves an object being overwritten as it stands
            continue
        assert listed <= named, (listed, named)
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    assert len(named) >= parts


def test_kill_9_then_resume_on_s3_loses_and_repeats_nothing_and_listings_show_only_committed_parts(
    s3, tiny_model, tmp_path
):
    docs = _docs(tmp_path / "docs.jsonl", 500, bad_every=97, seed=5)
    _put_folder(s3, tmp_path, "tests/killed/in")
    args = killed_run_args("tests/killed", tiny_model)
    env = {**os.environ, **s3.env(), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "annotator", "annotate", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        watch_commits(s3, "tests/killed/out", process, seconds=120)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    resumed = CliRunner().invoke(cli, ["annotate", *args, "--resume"])
    assert resumed.exit_code == 3, resumed.output
    assert "resuming after" in resumed.output
    reference = CliRunner().invoke(
        cli, ["annotate", str(docs), "-o", str(tmp_path / "reference.jsonl"), *args[3:]]
    )
    assert reference.exit_code == 3
    got = _remote_documents(s3, "tests/killed/out")
    assert_same_documents(
        _without_source(got), _without_source(_lines([tmp_path / "reference.jsonl"]))
    )


def _one_line_error(result, *words: str) -> None:
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), result.output


def test_unreachable_endpoint_wrong_credentials_missing_or_read_only_bucket_are_one_line(
    s3, tiny_model, tmp_path, monkeypatch
):
    (tmp_path / "in").mkdir()
    _put_folder(s3, _docs(tmp_path / "in" / "docs.jsonl", 5).parent, "tests/errors/in")
    run = ["-m", str(tiny_model), "--format", "jsonl"]

    def annotate(*args: str):
        return CliRunner().invoke(cli, ["annotate", *args, *run])

    _one_line_error(annotate("s3://nobucket/docs/", "-o", f"{tmp_path}/o/"), "no such bucket")
    _one_line_error(annotate("s3://tests/errors/in/", "-o", "s3://nobucket/out/"), "no such bucket")
    _one_line_error(
        annotate("s3://tests/errors/in/", "-o", "s3://tests/errors/out"), "end it with /"
    )
    _one_line_error(
        annotate("s3://tests/errors/in/", "-o", "s3://tests/errors/in/out/"), "lies under"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER[1])
    _one_line_error(
        annotate("s3://tests/errors/in/", "-o", "s3://tests/errors/out/"), "access denied"
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _one_line_error(annotate("s3://tests/errors/in/", "-o", f"{tmp_path}/o2/"), "access denied")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    started = time.monotonic()
    _one_line_error(annotate("s3://tests/errors/in/", "-o", f"{tmp_path}/o3/"), "cannot reach")
    assert time.monotonic() - started < 30
    assert not any(tmp_path.glob("o*/manifest.json"))  # refused before any tagging


def test_a_run_holding_the_lease_of_an_s3_output_keeps_a_second_one_out(s3, tiny_model, tmp_path):
    (tmp_path / "in").mkdir()
    _put_folder(s3, _docs(tmp_path / "in" / "docs.jsonl", 5).parent, "tests/leased/in")
    with admin_filesystem(s3).open_output_stream("tests/leased/out/.annotator.lock") as handle:
        lease = {
            "pid": 1,
            "host": "another-machine",
            "started": "2026-01-01T00:00:00+0000",
            "expires": time.time() + 600,
            "token": "x",
        }
        handle.write(json.dumps(lease).encode())
    result = CliRunner().invoke(
        cli,
        [
            "annotate",
            "s3://tests/leased/in/",
            "-o",
            "s3://tests/leased/out/",
            "-m",
            str(tiny_model),
        ],
    )
    _one_line_error(result, "in use by another annotate run", "another-machine")

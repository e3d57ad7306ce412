"""`annotate --backend ray` against a local Ray started here; skipped when Ray is not installed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import pytest

from annotator.io.writers import SPANS_SCHEMA
from tests.objectstore import admin_filesystem
from tests.test_runs import (
    _Crash,
    _docs,
    _lines,
    _run,
    assert_same_documents,
    part_files,
    read_manifests,
)
from tests.test_storage import (
    ROOT,
    _put_folder,
    _remote_documents,
    _without_source,
    killed_run_args,
    watch_commits,
)

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("ray.data", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def local_ray():
    """Two CPUs, no dashboard, bound to localhost (the tests may not touch the network)."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-inputs")
    _docs(folder / "a.jsonl", 180, bad_every=61, seed=1)
    lines = [
        json.dumps({"text": line["text"]})
        for line in _lines([_docs(folder / "b.jsonl", 60, seed=2)])
    ]
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n")  # no ids: SOURCE:ROW ids
    return [str(folder / "a.jsonl"), str(folder / "b.jsonl")]


def _spans(paths):
    rows = [r for path in paths for r in pq.read_table(path).to_pylist()]
    return sorted(rows, key=lambda r: (r["doc_id"], r["start_char"]))


def _driver_writes_nothing(monkeypatch) -> list[dict]:
    """The driver of a Ray directory run opens no writer and reads no tagged record back: it
    gets each part's metadata only (returned, as received)."""
    from annotator.io import sinks
    from annotator.runs import directory
    from annotator.runs import ray as ray_runs

    def refuse(*args, **kwargs):
        raise AssertionError("the driver wrote rows")

    for module in (ray_runs, directory, sinks):  # the actors' processes import their own
        monkeypatch.setattr(module, "open_writer", refuse)
    monkeypatch.setattr(ray_runs.RaySource, "positioned", refuse)
    received, real_parts = [], ray_runs.RaySource.parts

    def parts(self, *args):
        for part in real_parts(self, *args):
            received.append(part)
            yield part

    monkeypatch.setattr(ray_runs.RaySource, "parts", parts)
    return received


def test_ray_output_equals_the_local_engines(local_ray, tiny_model, inputs, tmp_path, monkeypatch):
    common = [*inputs, "-m", str(tiny_model), "--on-error", "skip", "--part-size", "100"]
    local = _run(*common, "-o", f"{tmp_path / 'local'}/")
    received = _driver_writes_nothing(monkeypatch)
    remote = _run(*common, "-o", f"{tmp_path / 'ray'}/", "--backend", "ray", "--workers", "1")
    assert local.exit_code == remote.exit_code == 3, remote.output
    assert (
        local.output.splitlines()[-1].split(" entities")[0]
        == remote.output.splitlines()[-1].split(" entities")[0]
    )
    got, expected = _spans(part_files(tmp_path / "ray")), _spans(part_files(tmp_path / "local"))
    assert len(got) == len(expected) > 100
    assert any(":" in r["doc_id"] and r["source"].endswith("b.jsonl") for r in got)
    for x, y in zip(got, expected):
        assert {k: v for k, v in x.items() if k not in ("score", "run_id")} == {
            k: v for k, v in y.items() if k not in ("score", "run_id")
        }
        assert abs(x["score"] - y["score"]) < 1e-4
    schema = pq.read_schema(part_files(tmp_path / "ray")[0])
    assert schema.remove_metadata().equals(SPANS_SCHEMA)
    assert json.loads(schema.metadata[b"annotator"])["model_sha256"]
    [manifest] = read_manifests(tmp_path / "ray")
    assert manifest["skipped"] == 2
    # the actors wrote the parts; the driver got only their metadata, and numbered them
    assert {key for part in received for key in part} == {
        "file", "through", "staged", "documents", "rows", "bytes", "sha256", "errors",
        "sentences", "tokens", "entities", "seconds",
    }  # fmt: skip
    assert [p["file"] for p in manifest["parts"]] == [f"part-{i:05d}.parquet" for i in range(3)]
    assert [p["documents"] for p in manifest["parts"]] == [99, 81, 60]  # blocks of 100 records
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == [
        ".annotator.lock",
        "manifest.json",
        *(p["file"] for p in manifest["parts"]),
    ]


def test_ray_to_one_output_file_equals_the_local_engine(local_ray, tiny_model, inputs, tmp_path):
    common = [*inputs, "-m", str(tiny_model), "--on-error", "skip"]
    local = _run(*common, "-o", str(tmp_path / "local.jsonl"))
    remote = _run(*common, "-o", str(tmp_path / "ray.jsonl"), "--backend", "ray")
    assert local.exit_code == remote.exit_code == 3, remote.output
    assert_same_documents(_lines([tmp_path / "ray.jsonl"]), _lines([tmp_path / "local.jsonl"]))


@pytest.mark.parametrize("first, then", [("local", "ray"), ("ray", "local")])
def test_either_backend_resumes_a_sharded_run_the_other_started(
    local_ray, tiny_model, inputs, tmp_path, monkeypatch, first, then
):
    from annotator.runs import directory as runs

    out = tmp_path / "out"
    common = [
        *inputs,
        "-m",
        str(tiny_model),
        "--format",
        "jsonl",
        "--shard",
        "1/2",
        "--part-size",
        "20",
        "--on-error",
        "skip",
        "--workers",
        "1",
    ]
    real_save, calls = runs.Manifest.save, []

    def save(self, data=None):
        calls.append(1)
        if len(calls) == 4:  # the new manifest, two parts, then the driver dies
            raise _Crash()
        real_save(self, data)

    monkeypatch.setattr(runs.Manifest, "save", save)
    with pytest.raises(_Crash):
        _run(*common, "-o", f"{out}/", "--backend", first)
    monkeypatch.setattr(runs.Manifest, "save", real_save)
    [manifest] = read_manifests(out)
    assert len(manifest["parts"]) == 2
    # what a reader lists as parts is what the manifest names; the rest waits hidden
    listed = sorted(p.name for p in out.iterdir() if "part-" in p.name and p.name[0] != ".")
    assert listed == [p["file"] for p in manifest["parts"]]
    result = _run(*common, "-o", f"{out}/", "--resume", "--backend", then)
    assert result.exit_code in (0, 3) and "resuming after" in result.output
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and "part-" in p.name]
    reference = _run(
        *common, "-o", str(tmp_path / "reference.jsonl"), "--errors", str(tmp_path / "errors.jsonl")
    )
    assert reference.exit_code in (0, 3)
    assert_same_documents(_lines(part_files(out)), _lines([tmp_path / "reference.jsonl"]))
    [manifest] = read_manifests(out)
    assert manifest["complete"] and manifest["skipped"] == len(_lines([tmp_path / "errors.jsonl"]))


def test_ray_to_s3_killed_then_resumed_by_a_local_run_loses_and_repeats_nothing(
    object_store, tiny_model, tmp_path, monkeypatch
):
    """The actors upload their parts under pending names; a listing during the run shows only
    the parts the manifest names; after kill -9, a local --resume finishes the folder."""
    from pyarrow import fs

    (tmp_path / "in").mkdir()
    docs = _docs(tmp_path / "in" / "docs.jsonl", 800, bad_every=97, seed=5)
    _put_folder(object_store, tmp_path / "in", "tests/ray-killed/in")
    args = killed_run_args("tests/ray-killed", tiny_model)
    own_ray = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # its own cluster, not the fixture's
    env = {**os.environ, **object_store.env(), "PYTHONPATH": str(ROOT), "RAY_TMPDIR": own_ray}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "annotator", "annotate", *args, "--backend", "ray"]
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [*command, "--workers", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # Ray's own processes are killed with it
        )
    try:
        watch_commits(object_store, "tests/ray-killed/out", process, seconds=240)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(own_ray, ignore_errors=True)
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    resumed = _run(*args, "--resume")
    assert resumed.exit_code == 3 and "resuming after" in resumed.output, resumed.output
    reference = _run(str(docs), "-o", str(tmp_path / "reference.jsonl"), *args[3:])
    assert reference.exit_code == 3
    got = _remote_documents(object_store, "tests/ray-killed/out")
    assert_same_documents(
        _without_source(got), _without_source(_lines([tmp_path / "reference.jsonl"]))
    )
    listing = admin_filesystem(object_store).get_file_info(fs.FileSelector("tests/ray-killed/out"))
    left = [info.base_name for info in listing]
    assert not [name for name in left if name.endswith(".pending")]


def test_ray_bad_records_and_on_error_fail_are_the_local_backends(local_ray, tiny_model, tmp_path):
    """Bad records (a lone surrogate, a cut line): the same --errors lines and rows as a local
    run; --on-error fail stops at the first, in one line, keeping the parts committed before
    it."""
    lines = [
        json.dumps({"id": f"d{i}", "text": f"Angela Merkel visited Paris {i}."}) for i in range(30)
    ]
    lines[11] = '{"id": "s", "text": "Paris \\ud800 London"}'
    lines[24] = '{"id": "broken'
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    common = [str(tmp_path / "docs.jsonl"), "-m", str(tiny_model), "--format", "jsonl"]
    common += ["--part-size", "10", "--workers", "1"]
    for backend in ("local", "ray"):
        result = _run(
            *common,
            "-o",
            f"{tmp_path / backend}/",
            "--backend",
            backend,
            "--on-error",
            "skip",
            "--errors",
            str(tmp_path / f"{backend}-errors.jsonl"),
        )
        assert result.exit_code == 3, result.output
    errors = [
        sorted(map(json.dumps, _lines([tmp_path / f"{b}-errors.jsonl"]))) for b in ("local", "ray")
    ]
    assert errors[0] == errors[1] and len(errors[0]) == 2 and "lone surrogate" in errors[0][0]
    assert_same_documents(
        _lines(part_files(tmp_path / "ray")), _lines(part_files(tmp_path / "local"))
    )
    failed = _run(*common, "-o", f"{tmp_path / 'fail'}/", "--backend", "ray")
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert [line for line in failed.output.splitlines() if line.startswith("Error:")] == [
        f"Error: {tmp_path / 'docs.jsonl'}:12: a lone surrogate (\\ud800) in the JSON: not valid "
        "Unicode text (use --on-error skip to skip bad records)"
    ]
    [manifest] = read_manifests(tmp_path / "fail")
    assert [p["documents"] for p in manifest["parts"]] == [10] and not manifest["complete"]

"""`annotate --backend ray` against a local Ray started here; skipped when Ray is not installed."""

import json

import pyarrow.parquet as pq
import pytest

from annotator.io.writers import SPANS_SCHEMA
from tests.test_runs import (
    _Crash,
    _docs,
    _lines,
    _run,
    assert_same_documents,
    part_files,
    read_manifests,
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
        "sentences", "tokens", "entities",
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

"""The GPU check prepared here, on the CPU: the `gpu` marker, `make gpu-wheels`' offline dry run
and closure check, the stub wheel, and `scripts/gpu-check.sh --cpu-dry-run` end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_wheels = _load("gpu_wheels")
gpu_check = _load("gpu_check")


def _python(*args: str, timeout: int = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="here the gpu tests run")
def test_gpu_marker_is_registered_and_gpu_tests_skip_without_cuda():
    result = _python(
        "-m",
        "pytest",
        "-m",
        "gpu",
        "--strict-markers",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "tests/test_gpu.py",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = re.search(r"(\d+) skipped", result.stdout)
    assert skipped and int(skipped.group(1)) >= 5, result.stdout
    assert "no CUDA device" in result.stdout and "passed" not in result.stdout


def test_gpu_wheels_dry_run_lists_the_pins_and_checks_the_budget_offline():
    result = _python("scripts/gpu_wheels.py", "--dry-run", timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("flair", "spacy"):  # the versions this environment runs
        assert f"{name}=={version(name)}" in result.stdout
    assert "transformers==4." in result.stdout and re.search(
        r"MiB of 64\.0 MiB: [\d.]+ MiB to spare", result.stdout
    )
    over = _python("scripts/gpu_wheels.py", "--dry-run", "--budget-mib", "30", timeout=60)
    assert over.returncode == 1 and re.search(r"of 30\.0 MiB: over by [\d.]+ MiB", over.stderr)
    assert len({w.name for w in gpu_wheels.WHEELS}) == len(gpu_wheels.WHEELS)  # one version of each


def test_closure_check_names_what_is_neither_carried_stubbed_nor_on_the_device():
    carried = {
        "flair": (
            "0.15.1",
            [
                "transformers[sentencepiece]<5.0.0,>=4.25.0",
                "boto3>=1.20",
                "torch>=1.13.1",
                "no-such-package>=1",
                "gensim; extra == 'word'",
            ],
        )
    }
    problems = gpu_wheels.unmet(carried)
    assert problems == [
        "flair needs no-such-package>=1: not carried, not stubbed, not on the device",
        "flair needs transformers[sentencepiece]<5.0.0,>=4.25.0: 5.17.0 is on the device",
    ]
    carried["transformers"] = (
        "4.57.6",
        [
            "tokenizers<=0.23.0,>=0.22.0",
            "protobuf; extra == 'sentencepiece'",
            "nope; extra == 'sentencepiece'",
            "nope2; extra == 'other'",
        ],
    )
    assert gpu_wheels.unmet(carried) == [
        "flair needs no-such-package>=1: not carried, not stubbed, not on the device",
        "transformers needs tokenizers<=0.23.0,>=0.22.0: 0.23.2 is on the device",
        'transformers[sentencepiece] needs nope; extra == "sentencepiece": '
        "not carried, not stubbed, not on the device",
    ]


def test_stub_wheel_imports_as_flair_needs_and_raises_on_use(tmp_path):
    wheel = gpu_wheels.stub_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
        record = archive.read(next(n for n in archive.namelist() if n.endswith("RECORD"))).decode()
    assert "boto3/__init__.py,sha256=" in record
    assert wheel.stat().st_size == gpu_wheels.STUBS_WHEEL.size  # reproducible, as recorded
    code = (
        "import boto3, gdown.download_folder, zstandard\n"
        "from botocore import UNSIGNED\nfrom botocore.config import Config\n"
        "boto3.resource('s3')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 1
    assert "RuntimeError: boto3.resource: boto3 is a stub in annotator's GPU check" in result.stderr


def test_goals_are_judged_from_the_measures():
    values = {
        "annotate_vs_flair": 120.0,
        "annotate_words_per_second": 400_000.0,
        "identical_spans": True,
        "fast_50_epochs_seconds": None,
        "fast_vs_flair_epoch": 31.0,
        "workers_scaling": 9.0,
        "check_seconds": 470.0,
    }
    judged = {goal["measure"]: goal["met"] for goal in gpu_check.judge(values)}
    assert judged == {
        "annotate_vs_flair": True,
        "annotate_words_per_second": False,
        "identical_spans": True,
        "fast_50_epochs_seconds": None,
        "fast_vs_flair_epoch": True,
        "workers_scaling": False,
        "check_seconds": True,
    }


def test_cpu_dry_run_runs_every_step_and_writes_the_results(tmp_path):
    result = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "--cpu-dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bench.json",
        "gpu-check.log",
        "pytest.txt",
        "results.json",
    ]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "cpu-dry-run" and results["device"] == "cpu"
    assert [(s["name"], s["rc"]) for s in results["steps"]] == [
        ("pytest", "0"),
        ("bench", "0"),
        ("epochs", "0"),
        ("scaling", "0"),
    ]
    assert results["pytest"]["failures"] == results["pytest"]["errors"] == 0
    assert set(results["bench_rows"]) >= {"1", "2@32", "2@512", "3", "3w", "3p", "4"}
    assert all(row["words_per_second"] > 0 for row in results["bench_rows"].values())
    # the Flair tutorial's family (its stand-in), the fast engine in fp32 and, where the CPU
    # has bfloat16 units, bf16
    assert set(results["stand_in_rows"]) >= {"2@32", "3", "3p", "4"}
    assert "stand-in (3) annotator annotate" in (tmp_path / "gpu-check.log").read_text()
    assert [(r["trainer"], r["bf16"]) for r in results["epochs"]["runs"]] == [
        ("fast", False),
        ("flair", False),
    ]
    assert [r["workers"] for r in results["scaling"]["runs"]] == [1, 2]
    measures = results["measures"]
    assert measures["identical_spans"] is True
    assert all(
        measures[key] > 0
        for key in (
            "annotate_vs_flair",
            "annotate_words_per_second",
            "fast_50_epochs_seconds",
            "fast_vs_flair_epoch",
            "workers_scaling",
            "check_seconds",
        )
    )
    assert [g["measure"] for g in results["goals"]] == [goal[1] for goal in gpu_check.GOALS]
    assert "goals:" in result.stdout and "annotate end to end vs Flair predict @32" in result.stdout


def test_slimmed_pure_python_wheel_leaves_out_other_frameworks_model_code(tmp_path):
    """transformers travels without its TensorFlow/Flax model files, with a matching RECORD."""
    source = tmp_path / "source" / "demo-1.0-py3-none-any.whl"
    source.parent.mkdir()
    kept = ["demo/models/bert/modeling_bert.py", "demo/models/bert/tokenization_bert.py"]
    gone = ["demo/models/bert/modeling_tf_bert.py", "demo/models/bert/modeling_flax_bert.py"]
    with zipfile.ZipFile(source, "w") as wheel:
        for name in [*kept, *gone]:
            wheel.writestr(name, f"# {name}\n")
        wheel.writestr("demo-1.0.dist-info/RECORD", "")
    target = tmp_path / source.name
    gpu_wheels.slim(source, target)
    with zipfile.ZipFile(target) as wheel:
        names = wheel.namelist()
        record = wheel.read("demo-1.0.dist-info/RECORD").decode()
    assert sorted(names) == sorted([*kept, "demo-1.0.dist-info/RECORD"])
    assert all(name in record for name in kept) and not any(name in record for name in gone)
    # a wheel with nothing to leave out is copied as it is
    plain = tmp_path / "source" / "plain-1.0-py3-none-any.whl"
    with zipfile.ZipFile(plain, "w") as wheel:
        wheel.writestr("plain/__init__.py", "")
    gpu_wheels.slim(plain, tmp_path / plain.name)
    assert (tmp_path / plain.name).read_bytes() == plain.read_bytes()

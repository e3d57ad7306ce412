"""The README's examples run as written: every fenced block whose info string is
`bash runnable` runs in a copy of examples/, with the tiny tagger as the model."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```bash runnable\n(.*?)^```", README, re.S | re.M)


def test_the_first_block_is_what_a_newcomer_needs():
    first = re.search(r"^```\w*\n(.*?)^```", README, re.S | re.M)[1]
    assert [line.split("#")[0].strip() for line in first.strip().splitlines()] == [
        "make demo",
        "make test",
    ]
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.split()[1])
def test_readme_block_runs(block, tiny_model, tmp_path):
    shutil.copytree(
        ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("output")
    )
    env = {
        **os.environ,
        "ANNOTATOR_MODEL": str(tiny_model),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr

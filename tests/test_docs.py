"""The documentation works as written: every fenced block marked `bash runnable` in README.md
and docs/**/*.md runs (in a copy of examples/, with the packaged default model), a `text
expected` block after it is what it prints, and the site builds with `mkdocs build --strict`."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from annotator.cli import cli

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# a runnable block, then (with only prose between, no other fence) the output it must print
_LINES = r"(?:(?!```)[^\n]*\n)*?"  # whole lines, none of them a fence
RUNNABLE = re.compile(
    rf"^```bash runnable\n(?P<block>{_LINES})```\n"
    rf"(?:{_LINES}```text expected\n(?P<expected>{_LINES})```)?",
    re.M,
)
ISSUE_NUMBER = re.compile(r"(?i)\bissues?\s*#?\d+|(?<![\w&])#\d+\b")


def _blocks() -> list:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in RUNNABLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{page.relative_to(ROOT)}:{line}"
            found.append(pytest.param(match["block"], match["expected"], id=name))
    return found


BLOCKS = _blocks()


def _pattern(line: str) -> str:
    """An expected output line; a throughput figure (`965 words/s`) matches any number."""
    pieces = re.split(r"[\d,]+(?= words/s)", line.rstrip())
    return r"[\d,]+".join(re.escape(piece) for piece in pieces)


def test_the_docs_have_runnable_blocks():
    pages = {str(block.id).split(":")[0] for block in BLOCKS}
    assert "README.md" in pages and len(pages) >= 4, pages


@pytest.mark.parametrize("block, expected", BLOCKS)
def test_runnable_block(block, expected, tmp_path):
    if re.search(r"\bjq\b", block) and shutil.which("jq") is None:
        pytest.skip("jq is not installed (`make tools` installs it)")
    shutil.copytree(
        ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("output")
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANNOTATOR_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        PYTHONPATH=str(ROOT),
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    printed = result.stdout + result.stderr
    for line in (expected or "").splitlines():
        if line.strip():
            assert re.search(_pattern(line), printed, re.M), f"{line!r} not in:\n{printed}"


def test_expected_output_pattern_matches_only_its_line():
    summary = "12 documents, 83 entities, 0 skipped, 909 words/s"
    assert re.search(_pattern(summary), "12 documents, 83 entities, 0 skipped, 1,234 words/s")
    assert not re.search(_pattern(summary), "12 documents, 84 entities, 0 skipped, 909 words/s")


def _help_texts() -> dict[str, str]:
    """Every command's --help as a user reads it, hidden ones included."""
    texts = {}

    def walk(command: click.Command, path: list[str]) -> None:
        ctx = click.Context(command, info_name=" ".join(path))
        texts[" ".join(path)] = command.get_help(ctx)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(cli, ["annotator"])
    return texts


def test_no_issue_numbers_in_what_users_read():
    """Project history (issue numbers) stays in the changelog and git, not in the docs."""
    texts = {str(page.relative_to(ROOT)): page.read_text(encoding="utf-8") for page in PAGES}
    texts["Makefile"] = "\n".join(
        line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("#")
    )
    texts.update(_help_texts())
    found = {name: ISSUE_NUMBER.findall(text) for name, text in texts.items()}
    assert not {name: hits for name, hits in found.items() if hits}
    assert len(texts) > 20  # the commands' help texts were read too


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocs_click") is None,
    reason="mkdocs is not installed (`make install` installs it with the dev extra)",
)
def test_the_site_builds_strictly_and_offline(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cli_page = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    for command in ("annotate", "train", "evaluate", "calibrate", "view", "--min-score"):
        assert command in cli_page  # generated from the Click commands themselves
    api_page = (site / "reference" / "python-api.html").read_text(encoding="utf-8")
    assert "annotate_texts" in api_page  # from the docstrings
    fetched = set()
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        fetched |= set(re.findall(r'<script[^>]+src="(https?:[^"]+)"', html))
        fetched |= set(re.findall(r'<link[^>]+href="(https?:[^"]+)"', html))
    assert not fetched  # no web fonts, analytics or scripts from elsewhere


def test_the_config_reference_lists_every_key():
    """docs/reference/config.md is written by hand: it must name exactly TrainConfig's fields."""
    import dataclasses

    from annotator.training.config import TrainConfig

    page = (ROOT / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `(\w+)` \|", page, re.M)
    assert sorted(documented) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    defaults = TrainConfig()
    for key, value in re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", page, re.M):
        assert value == json.dumps(getattr(defaults, key)), key

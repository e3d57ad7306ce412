"""The README is a screen or two a newcomer reads first: `make demo` and `make test` come first,
it stays short, and every link in it leads to a file of the repository (its runnable blocks run
in tests/test_docs.py)."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_first_block_is_what_a_newcomer_needs():
    first = re.search(r"^```\w*\n(.*?)^```", README, re.S | re.M)[1]
    assert [line.split("#")[0].strip() for line in first.strip().splitlines()] == [
        "make demo",
        "make test",
    ]
    assert len(re.findall(r"^```bash runnable\n", README, re.M)) >= 1


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 150


def test_every_link_leads_to_a_file():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [target for target in targets if "://" not in target]
    assert len(local) >= 10  # the README points into the docs
    assert [target for target in local if not (ROOT / target).exists()] == []

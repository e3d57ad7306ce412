"""A small, learnable CoNLL-style corpus the tests build themselves (no downloads, no shared
data)."""

from __future__ import annotations

import random
from pathlib import Path

PEOPLE = [
    "John Smith",
    "Maria Garcia",
    "Angela Merkel",
    "Li Wei",
    "Ahmed Khan",
    "Anna Berg",
    "Peter Brown",
    "Sofia Rossi",
    "David Cohen",
    "Yuki Tanaka",
    "Carlos Silva",
    "Emma Stone",
]
ORGS = [
    "Reuters",
    "Siemens",
    "the United Nations",
    "Microsoft",
    "Deutsche Bank",
    "Toyota",
    "the World Bank",
    "Nestle",
    "Oxfam",
    "Airbus",
]
PLACES = [
    "London",
    "Paris",
    "Berlin",
    "New York",
    "Tokyo",
    "Madrid",
    "Cairo",
    "Lima",
    "Oslo",
    "Sydney",
    "Rome",
    "Nairobi",
]
MISC = ["German", "French", "British", "Japanese", "Olympic", "Christmas"]
TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "{PER} said on Monday that {ORG} would open an office in {LOC} .",
    "The {MISC} minister met {PER} in {LOC} .",
    "{ORG} shares fell 3 percent in {LOC} trading .",
    "In {LOC} , {PER} told reporters the {MISC} team had won .",
    "A spokesman for {ORG} declined to comment .",
    "Prices rose sharply last week .",
    "{PER} arrived in {LOC} on Friday .",
]


def _tags(words: list[str], label: str | None, scheme: str) -> list[str]:
    if label is None or label == "the":
        return ["O"] * len(words)
    if scheme == "iob1":
        return [f"I-{label}"] * len(words)
    return [f"B-{label}"] + [f"I-{label}"] * (len(words) - 1)


def sentences(count: int, seed: int = 0, scheme: str = "bio") -> list[list[tuple[str, str]]]:
    """`count` sentences of (token, tag) pairs drawn from the templates."""
    rng = random.Random(seed)
    pools = {"PER": PEOPLE, "ORG": ORGS, "LOC": PLACES, "MISC": MISC}
    return [_filled(rng.choice(TEMPLATES), pools, rng, scheme) for _ in range(count)]


def _filled(template: str, pools: dict[str, list[str]], rng, scheme: str = "bio"):
    """A template's slots filled from `pools`, as (token, tag) pairs (a leading `the` is O)."""
    pairs: list[tuple[str, str]] = []
    for piece in template.split(" "):
        if piece.startswith("{"):
            label = piece[1:-1]
            words = rng.choice(pools[label]).split(" ")
            if words[0] == "the":
                pairs.append(("the", "O"))
                words = words[1:]
            pairs.extend(zip(words, _tags(words, label, scheme)))
        else:
            pairs.append((piece, "O"))
    return pairs


def write_corpus(
    folder: Path, sizes: tuple[int, int, int] = (240, 60, 60), columns: int = 4, scheme: str = "bio"
) -> Path:
    """train/dev/test files in CoNLL layout (4 columns) or `token TAG` (2 columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (split, size) in enumerate(zip(("train", "dev", "test"), sizes)):
        lines = ["-DOCSTART- -X- -X- O" if columns == 4 else "-DOCSTART- O", ""]
        for sentence in sentences(size, seed=offset, scheme=scheme):
            for token, tag in sentence:
                lines.append(f"{token} NN O {tag}" if columns == 4 else f"{token} {tag}")
            lines.append("")
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# Another domain for `adapt`: contracts, with names and sentence shapes the news corpus lacks
# and a convention of its own (a contract's parties are persons, whatever their names look like)
PARTIES = ["Kestrel Holdings", "Barnaby Quill", "Orlov Trading", "Ines Wexford", "Tamsin Vale"]
FIRMS = ["Halvorsen Ltd", "Quarry Partners", "Zentrix AG", "Mossgreen LLP"]
VENUES = ["Delaware", "Ontario", "Bavaria", "Queensland"]
CONTRACT_TEMPLATES = [
    "This Agreement is made between {PER} and {PER} .",
    "{PER} shall indemnify {PER} against all claims .",
    "Notices to {PER} shall be sent care of {ORG} , {LOC} .",
    "This Agreement is governed by the laws of {LOC} .",
    "The Seller shall pay all fees within thirty days .",
]


def contract_documents(
    count: int, seed: int = 0, sentences_per_document: int = 3
) -> list[list[list[tuple[str, str]]]]:
    """`count` documents of contract sentences of (token, BIO tag) pairs."""
    rng = random.Random(seed)
    pools = {"PER": PARTIES, "ORG": FIRMS, "LOC": VENUES}
    return [
        [_filled(rng.choice(CONTRACT_TEMPLATES), pools, rng) for _ in range(sentences_per_document)]
        for _ in range(count)
    ]


def write_column_file(path: Path, documents) -> Path:
    """`token TAG` lines, a blank line after each sentence, `-DOCSTART- O` before each document
    (the column file `review export` writes and `adapt` reads)."""
    lines = []
    for document in documents:
        lines += ["-DOCSTART- O", ""]
        for sentence in document:
            lines += [f"{token} {tag}" for token, tag in sentence] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

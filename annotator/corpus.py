"""Corpora: fetch with checksums, read column formats, and count what is inside.

Fetching writes each file under a temporary name in the destination and renames it only
after its sha256 matched, so a failed or interrupted fetch never leaves a corrupt file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from annotator.errors import CorpusError
from annotator.files import AtomicFile, sha256_file

SPLITS = ("train", "dev", "test")
DEFAULT_COLUMN_FORMAT = "text,pos,chunk,ner"
CHUNK = 1 << 16


@dataclass(frozen=True)
class CorpusFile:
    split: str
    name: str
    url: str
    sha256: str


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: its files, its column layout, and the counts its paper reports."""

    name: str
    files: tuple[CorpusFile, ...]
    column_format: str
    reference: str
    reference_sentences: dict[str, int] = field(default_factory=dict)
    reference_tokens: dict[str, int] = field(default_factory=dict)


_CROSSWEIGH = "https://raw.githubusercontent.com/ZihanWangKi/CrossWeigh/master/data"

CORPORA: dict[str, CorpusSpec] = {
    "conllpp": CorpusSpec(
        name="conllpp",
        files=(
            CorpusFile(
                "train",
                "conllpp_train.txt",
                f"{_CROSSWEIGH}/conllpp_train.txt",
                "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423",
            ),
            CorpusFile(
                "dev",
                "conllpp_dev.txt",
                f"{_CROSSWEIGH}/conllpp_dev.txt",
                "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b",
            ),
            CorpusFile(
                "test",
                "conllpp_test.txt",
                f"{_CROSSWEIGH}/conllpp_test.txt",
                "4eb3b5114787d0df24087e9c9dfc956abf4cfd5e201bc1056b48ff4f7b37c0e8",
            ),
        ),
        column_format=DEFAULT_COLUMN_FORMAT,
        reference="CoNLL-2003 (Tjong Kim Sang & De Meulder, 2003)",
        # Sentence counts as the paper (and Flair) count them: blank-line blocks, -DOCSTART-
        # included.
        reference_sentences={"train": 14987, "dev": 3466, "test": 3684},
    )
}


def _copy_verified(
    read: IO[bytes], total: int | None, target: Path, expected: str, label: str, progress: bool
) -> None:
    """Stream into a temporary file beside `target`; rename only when the checksum matches."""
    from tqdm import tqdm  # here: its import is a share of a usage error's answer

    digest = hashlib.sha256()
    with AtomicFile(target, durable=True) as atomic:
        with (
            open(atomic.tmp, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for block in iter(lambda: read.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
        if digest.hexdigest() != expected:
            raise CorpusError(
                f"{label}: sha256 {digest.hexdigest()} does not match the expected {expected}; "
                "the file was not written"
            )


def fetch_corpus(
    name: str,
    dest: str | Path,
    source: str | Path | None = None,
    progress: bool = True,
    opener: Callable[[str], IO[bytes]] | None = None,
) -> list[Path]:
    """Download (or copy from `source`) a named corpus into `dest`, verifying every file.

    Files already present with the right checksum are kept, so a fetch can be re-run.
    """
    spec = CORPORA.get(name)
    if spec is None:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for item in spec.files:
        target = dest / item.name
        if target.exists() and sha256_file(target) == item.sha256:
            written.append(target)
            continue
        if source is not None:
            local = Path(source) / item.name
            if not local.is_file():
                raise CorpusError(f"{local}: no such file (expected {item.name} in {source})")
            with open(local, "rb") as handle:
                _copy_verified(
                    handle, local.stat().st_size, target, item.sha256, str(local), progress
                )
        else:
            try:
                with (opener or _open_url)(item.url) as response:
                    total = (
                        int(response.headers.get("Content-Length") or 0) or None
                        if hasattr(response, "headers")
                        else None
                    )
                    _copy_verified(response, total, target, item.sha256, item.name, progress)
            except (OSError, TimeoutError) as exc:  # urllib's URLError is an OSError
                reason = getattr(exc, "reason", exc)
                raise CorpusError(
                    f"could not download {item.url}: {reason}. On a machine without access, "
                    f"copy the files by other means and use --from DIR"
                ) from None
        written.append(target)
    return written


def _open_url(url: str) -> IO[bytes]:
    import urllib.request  # only here: its import is a share of a usage error's answer

    return urllib.request.urlopen(url, timeout=60)


def parse_column_format(spec: str) -> tuple[dict[int, str], str]:
    """`text,pos,chunk,ner` → ({0: 'text', 3: 'ner'}, 'ner'): the token column and the tag column.

    The tag column is the one named `ner` (or else the last named column); `_` or other names
    are skipped, so `text,ner` reads two-column `token TAG` files.
    """
    names = [name.strip() for name in spec.split(",")]
    if "text" not in names:
        raise CorpusError(f"column format {spec!r} names no 'text' column")
    others = [name for name in names if name not in ("text", "_", "")]
    if not others:
        raise CorpusError(f"column format {spec!r} names no tag column")
    tag = "ner" if "ner" in others else others[-1]
    return {names.index("text"): "text", names.index(tag): tag}, tag


_TAG = re.compile(r"O|[IBESLU]-\S+")


def check_column_format(path: Path, spec: str, lines: int = 500) -> None:
    """Refuse a column format that does not fit the file, in one line that names
    --column-format and the layout found: counts the columns and finds the one holding
    IOB/BIO/BIOES tags, so a 2-column file read as 4 columns is no silent zero."""
    columns, tag = parse_column_format(spec)
    rows: list[list[str]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if fields and not fields[0].startswith("-DOCSTART-"):
                rows.append(fields)
                if len(rows) >= lines:
                    break
    if not rows:
        raise CorpusError(f"{path}: no token lines")
    width = min(len(row) for row in rows)
    tagged = [i for i in range(width) if all(_TAG.fullmatch(row[i]) for row in rows)]
    position = next(i for i, name in columns.items() if name == tag)
    named = len(spec.split(","))  # `_` too: naming every column is an explicit choice
    if position < width and position in tagged and (len(tagged) == 1 or named >= width):
        return
    where = " and ".join(str(i + 1) for i in tagged)
    if tagged and tagged[-1] > 0:  # CoNLL's chunk tags look like entity tags: NER comes last
        names = ["text"] + ["_"] * (tagged[-1] - 1) + ["ner"]
        found = (
            f"its tags are in column{'s' if len(tagged) > 1 else ''} {where}: use "
            f"--column-format {','.join(names)}" + (" (the last)" if len(tagged) > 1 else "")
        )
    else:
        found = "no column of IOB/BIO/BIOES tags found; give --column-format (e.g. text,ner)"
    if position < width and position in tagged:  # several tag columns, not all of them named
        problem = f"--column-format {spec} names {named} of them, and columns {where} hold tags"
    else:
        problem = f"column {position + 1} ({tag!r} in --column-format {spec}) holds no tags"
    raise CorpusError(f"{path}: has {width} column{'s' if width != 1 else ''}; {problem}; {found}")


def find_split_files(corpus: str | Path) -> dict[str, Path]:
    """The split files of a corpus: a folder's train/dev/test files by the usual naming
    conventions, or one column file, which stands for dev and test (a labelled sample of one's
    own text, to evaluate or calibrate a model on)."""
    corpus = Path(corpus)
    if corpus.is_file():
        return {"dev": corpus, "test": corpus}
    if not corpus.is_dir():
        raise CorpusError(f"{corpus}: no such corpus folder or file")
    patterns = {"train": ("train",), "dev": ("dev", "testa", "valid"), "test": ("testb", "test")}
    found: dict[str, Path] = {}
    files = sorted(p for p in corpus.iterdir() if p.is_file() and not p.name.startswith("."))
    for split, keys in patterns.items():
        for key in keys:
            match = [
                p
                for p in files
                if key in p.name.lower()
                and p not in found.values()
                and not (split == "test" and "testa" in p.name.lower())
            ]
            if match:
                found[split] = match[0]
                break
    if not found:
        raise CorpusError(
            f"{corpus}: no corpus file (a file whose name contains 'train', 'dev' or 'test')"
        )
    return found


def training_files(corpus_dir: str | Path) -> dict[str, Path]:
    """`find_split_files` of a corpus to train on, which must have a train split."""
    files = find_split_files(corpus_dir)
    if "train" not in files:
        raise CorpusError(f"{corpus_dir}: no training file (a file whose name contains 'train')")
    return files


#: one sentence of a column file: (token, tag) pairs
Tagged = list[tuple[str, str]]


def read_tagged_documents(
    path: str | Path, column_format: str = DEFAULT_COLUMN_FORMAT
) -> list[list[Tagged]]:
    """A column file as documents of sentences of (token, tag); `-DOCSTART-` starts a document
    (a file without one is a single document)."""
    columns, tag_name = parse_column_format(column_format)
    text_column = next(index for index, name in columns.items() if name == "text")
    tag_column = next(index for index, name in columns.items() if name == tag_name)
    documents: list[list[Tagged]] = [[]]
    sentence: Tagged = []
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")  # as a file iterates lines
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 ({exc})") from None
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "-DOCSTART-":
            if documents[-1]:
                documents.append([])
            continue
        if parts:
            sentence.append((parts[text_column], parts[tag_column]))
        elif sentence:
            documents[-1].append(sentence)
            sentence = []
    if sentence:
        documents[-1].append(sentence)
    return [document for document in documents if document]


log = logging.getLogger("annotator")


# the model-card key under which a model trained on train + dev records its held-out dev share
HOLDOUT_KEY = "dev_holdout"


def held_out(document: int, share: float) -> bool:
    """Whether the `document`-th document of a split is in its held-out `share`: one in every
    1/share, spread evenly, so the file's documents and Flair's sentences pick the same ones."""
    return math.floor((document + 1) * share + 1e-9) > math.floor(document * share + 1e-9)


def document_numbers(sentences: Iterable) -> list[int]:
    """The document number of each Flair sentence, counted as `read_tagged_documents` counts
    them: a `-DOCSTART-` sentence opens a document unless the current one has no sentence yet."""
    numbers, document, filled = [], 0, False
    for sentence in sentences:
        if "".join(token.text for token in sentence) == "-DOCSTART-":
            if filled:
                document, filled = document + 1, False
        else:
            filled = True
        numbers.append(document)
    return numbers


def model_holdout(tagger) -> float:
    """The share of dev's documents a model trained on train + dev held out (0: none)."""
    return float((getattr(tagger, "model_card", None) or {}).get(HOLDOUT_KEY, 0.0))


def holds_out(corpus: str | Path, split: str, tagger) -> bool:
    """Whether `split` of `corpus` is reduced to the documents `tagger` held out of training:
    dev of a corpus folder with a train split, for a model trained on train + dev (one file, or a
    folder without train, is a sample of one's own, scored whole)."""
    return (
        split == "dev"
        and Path(corpus).is_dir()
        and "train" in find_split_files(corpus)
        and bool(model_holdout(tagger))
    )


def held_out_dev(items: list, numbers: list[int], tagger, what: str) -> list:
    """`items` (dev's sentences or documents, numbered by document) reduced to the documents
    the model held out of training, where it was trained on train + dev; logged, so that a
    dev score always says which documents it is on."""
    share = model_holdout(tagger)
    if not share:
        return items
    kept = [item for item, number in zip(items, numbers, strict=True) if held_out(number, share)]
    log.info(
        "dev: only the documents this model held out of training (dev_holdout = %g): %d of %d %s",
        share,
        len(kept),
        len(items),
        what,
    )
    return kept


def token_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """(first token, end token, label) of each entity in IOB1, BIO or BIOES tags, as Flair reads
    them into spans (its `get_spans_from_bio`), malformed sequences and `_` tags included: the
    gold of `evaluate --raw` is the gold of Flair's token-level evaluation."""
    from flair.data import get_spans_from_bio

    return [
        (indices[0], indices[-1] + 1, label) for indices, _, label in get_spans_from_bio(list(tags))
    ]


def load_corpus(corpus: str | Path, column_format: str = DEFAULT_COLUMN_FORMAT):
    """Read a column-format corpus (a folder, or one file: see `find_split_files`) with Flair
    (IOB1, BIO and BIOES tags all become spans). Every line is a token, as
    `read_tagged_documents` reads it: Flair's default would drop a `#` token as a comment."""
    from flair.datasets import ColumnCorpus

    from annotator.logs import flair_imported

    flair_imported()
    columns, _ = parse_column_format(column_format)
    files = find_split_files(corpus)
    for path in set(files.values()):
        check_column_format(path, column_format)
    try:
        return ColumnCorpus(
            next(iter(files.values())).parent,
            columns,
            train_file=files["train"].name if "train" in files else None,
            dev_file=files["dev"].name if "dev" in files else None,
            test_file=files["test"].name if "test" in files else None,
            autofind_splits=False,
            comment_symbol=None,
            sample_missing_splits=False,
            in_memory=True,
            encoding="utf-8",
        )
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{corpus}: a corpus file is not UTF-8 ({exc})") from None


@dataclass
class SplitStats:
    sentences: int = 0
    tokens: int = 0
    entities: Counter = field(default_factory=Counter)


def split_sentences(corpus, split: str):
    return {"train": corpus.train, "dev": corpus.dev, "test": corpus.test}[split]


def corpus_stats(
    corpus_dir: str | Path, column_format: str = DEFAULT_COLUMN_FORMAT
) -> dict[str, SplitStats]:
    """Sentences, tokens and entities per type for each split, as Flair reads them."""
    corpus = load_corpus(corpus_dir, column_format)
    _, tag = parse_column_format(column_format)
    stats: dict[str, SplitStats] = {}
    for split in SPLITS:
        sentences = split_sentences(corpus, split)
        if sentences is None:
            continue
        item = stats[split] = SplitStats()
        for sentence in _iterate(sentences):
            item.sentences += 1
            item.tokens += len(sentence)
            item.entities.update(span.get_label(tag).value for span in sentence.get_spans(tag))
    return stats


def _iterate(dataset) -> Iterator:
    for index in range(len(dataset)):
        yield dataset[index]


def reference_warnings(stats: dict[str, SplitStats], name: str = "conllpp") -> list[str]:
    """Differences between the counted sentences and the paper's, one line each."""
    spec = CORPORA[name]
    warnings = []
    for split, expected in spec.reference_sentences.items():
        got = stats[split].sentences if split in stats else 0
        if got != expected:
            warnings.append(f"{split}: {got} sentences, but {spec.reference} reports {expected}")
    return warnings

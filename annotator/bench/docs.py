"""The bench's documents: long news-like texts made from CoNLL++ sentences (or from templates
when no corpus is at hand), the same for every row.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from annotator.errors import AnnotatorError

DEFAULT_DOCS = 200


DOC_WORDS = 350  # CoNLL tokens per generated document: 200 of them are ~76k spaCy tokens


REPOSITORY = Path(__file__).resolve().parents[2]


#: CoNLL++ where a checkout finds it: beside the repository (../shared), or inside it (shared/)
DEFAULT_CORPORA = [root / "shared" / "data" / "conllpp" for root in (REPOSITORY.parent, REPOSITORY)]


_NO_SPACE_BEFORE = {
    ",",
    ".",
    ";",
    ":",
    "!",
    "?",
    "%",
    ")",
    "]",
    "}",
    "...",
    "'s",
    "'S",
    "n't",
    "N'T",
    "'re",
    "'ve",
    "'ll",
    "'d",
    "'m",
    "'",
    "''",
}


_NO_SPACE_AFTER = {"(", "[", "{", "$", "``", "#"}


def detokenize(tokens: list[str]) -> str:
    """CoNLL tokens -> plain text, the way a news article would have printed them."""
    out: list[str] = []
    attach = True  # no space before the next token
    quote_open = False
    for token in tokens:
        space = not attach
        attach = False
        if token == '"':
            if quote_open:
                space = False
            else:
                attach = True
            quote_open = not quote_open
        elif token in _NO_SPACE_BEFORE:
            space = False
        if token in _NO_SPACE_AFTER:
            attach = True
        if space:
            out.append(" ")
        out.append(token)
    return "".join(out)


def read_conll_documents(path: Path) -> Iterator[list[list[str]]]:
    """The -DOCSTART- documents of a CoNLL file, each a list of token lists."""
    document: list[list[str]] = []
    sentence: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("-DOCSTART-"):
                if sentence:
                    document.append(sentence)
                    sentence = []
                if document:
                    yield document
                document = []
            elif not line:
                if sentence:
                    document.append(sentence)
                    sentence = []
            else:
                sentence.append(line.split()[0])
    if sentence:
        document.append(sentence)
    if document:
        yield document


def _conll_files(corpus: Path) -> list[Path]:
    files = []
    for split in ("test", "dev", "valid", "train"):
        files += sorted(p for p in corpus.glob(f"*{split}*") if p.is_file() and p.suffix != ".md")
    return list(dict.fromkeys(files))


def _article(sentences: list[list[str]]) -> str:
    """A news text: sentences without final punctuation (headline, dateline) end a line."""
    parts = []
    for tokens in sentences:
        text = detokenize(tokens)
        parts.append(text + (" " if tokens[-1] in (".", "!", "?", '"', "'") else "\n"))
    return "".join(parts).strip()


def conll_documents(corpus: Path, count: int, words: int = DOC_WORDS) -> list[str]:
    """`count` long news-like texts of about `words` tokens each: consecutive sentences of the
    CoNLL documents (test, then dev, then train), detokenised; a text that runs past the end of
    a -DOCSTART- document continues with the next one after a blank line. Deterministic."""
    texts: list[str] = []
    articles: list[list[list[str]]] = []  # the current text: its articles' sentences
    size = 0
    for path in _conll_files(corpus):
        for document in read_conll_documents(path):
            articles.append([])
            for sentence in document:
                articles[-1].append(sentence)
                size += len(sentence)
                if size >= words:
                    texts.append("\n\n".join(_article(a) for a in articles if a))
                    if len(texts) == count:
                        return texts
                    articles, size = [[]], 0
    if size:
        texts.append("\n\n".join(_article(a) for a in articles if a))
    return texts


_PEOPLE = [
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
]


_ORGS = [
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


_PLACES = ["London", "Paris", "Berlin", "New York", "Tokyo", "Madrid", "Cairo", "Lima", "Oslo"]


_MISC = ["German", "French", "British", "Japanese", "Olympic", "Christmas"]


_TEMPLATES = [
    "{PER} works for {ORG} in {LOC}.",
    "{PER} said on Monday that {ORG} would open an office in {LOC}.",
    "The {MISC} minister met {PER} in {LOC}.",
    "{ORG} shares fell 3 percent in {LOC} trading.",
    "In {LOC}, {PER} told reporters the {MISC} team had won.",
    "A spokesman for {ORG} declined to comment.",
    "Prices rose sharply last week.",
    "{PER} arrived in {LOC} on Friday.",
]


def synthetic_documents(count: int, words: int = DOC_WORDS, seed: int = 0) -> list[str]:
    """News-like texts from templates (when no CoNLL corpus is at hand). Deterministic."""
    rng = random.Random(seed)
    pools = {"PER": _PEOPLE, "ORG": _ORGS, "LOC": _PLACES, "MISC": _MISC}
    texts = []
    for _ in range(count):
        sentences: list[str] = []
        size = 0
        while size < words:
            sentence = re.sub(
                r"\{(\w+)\}", lambda m: rng.choice(pools[m.group(1)]), rng.choice(_TEMPLATES)
            )
            sentences.append(sentence)
            size += len(sentence.split()) + 1
        texts.append(" ".join(sentences))
    return texts


def write_docs(path: Path, texts: list[str], copies: int = 1) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for copy in range(copies):
            for index, text in enumerate(texts):
                doc_id = str(index) if copies == 1 else f"{copy}-{index}"
                handle.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")


def generated_documents(corpus: str | None, count: int | None) -> tuple[list[str], str]:
    """`count` documents from the CoNLL files in `corpus` (default: CoNLL++ beside the
    repository; repeated when it runs out) or from templates where there are none, and where
    they came from."""
    count = count if count is not None else DEFAULT_DOCS
    folder = (
        Path(corpus)
        if corpus
        else next((found for found in DEFAULT_CORPORA if found.is_dir()), DEFAULT_CORPORA[0])
    )
    if folder.is_dir() and _conll_files(folder):
        texts = conll_documents(folder, count)
        if texts:
            origin = f"generated from CoNLL documents in {folder}"
            if len(texts) < count:  # the corpus ran out: a larger bench repeats its texts
                origin += f" ({len(texts)} texts, repeated to {count})"
                texts = [texts[i % len(texts)] for i in range(count)]
            return texts, origin
    elif corpus:
        raise AnnotatorError(f"--corpus {corpus}: not a folder of CoNLL files")
    return synthetic_documents(count), "generated from templates (no CoNLL corpus found)"

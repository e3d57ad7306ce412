"""Sentence splitting and tokenization with spaCy, keeping exact character offsets.

Tokens come from spaCy's tokenizer and are never re-tokenized downstream, so every entity
maps back to `text[start:end]` of the original string. Whitespace tokens (runs of spaces,
newlines, non-breaking spaces) are dropped: a tagger never sees them.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from annotator.errors import AnnotatorError, UsageError
from annotator.files import die_with_parent
from annotator.records import Sentence

# spaCy refuses texts above nlp.max_length; longer documents are cut at whitespace into
# pieces this long, each split on its own, so one huge document cannot exhaust memory.
MAX_PIECE_CHARS = 100_000
#: the spaCy component of the list-marker rule, and the longest list number it takes
LIST_MARKERS = "annotator_list_markers"
MAX_MARKER_DIGITS = 3
#: the spaCy component of the line-break rule; a short line: under SHORT_LINE_CHARS characters
#: and under SHORT_LINE_SHARE of the text's median line
LINE_BREAKS = "annotator_line_breaks"
SHORT_LINE_CHARS = 50
SHORT_LINE_SHARE = 0.75
#: where a model's card records the tokens it was trained on and its sentence rules
CARD_KEY = "annotator_segmentation"


BLANK_NAME = "spacy.blank('en')+sentencizer (spaCy {version})"


def rule_labels(list_markers: bool = False, line_breaks: bool = False) -> str:
    """The sentence rules' part of a Segmenter's name."""
    return (" + line breaks" if line_breaks else "") + (" + list markers" if list_markers else "")


def check_pipeline(spacy_model: str | None) -> None:
    """A spaCy pipeline neither installed nor a folder is refused here, before any process or
    model starts (a splitter child would fail on it in a traceback of its own)."""
    if spacy_model is None or spacy_model.startswith("blank:") or os.path.isdir(spacy_model):
        return
    import importlib.util

    try:
        found = importlib.util.find_spec(spacy_model) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is no package
        found = False
    if not found:
        raise UsageError(
            f"--spacy-model {spacy_model!r}: no spaCy pipeline of that name is installed and no "
            f"folder has that path (install it: python -m spacy download {spacy_model})"
        )


class Segmenter:
    """A blank English pipeline with the rule-based sentencizer, or an installed pipeline.

    With `spacy_model`, that pipeline's parser or senter sets the boundaries (its other
    components are disabled: only boundaries are needed).
    """

    def __init__(
        self,
        spacy_model: str | None = None,
        max_sentence_tokens: int = 250,
        batch_size: int = 64,
        list_markers: bool = False,
        line_breaks: bool = False,
    ) -> None:
        """`list_markers`: a sentence that is only a list number ("1.") joins the next one
        (`join_list_markers`); `line_breaks`: a line break after a heading-like line ends a
        sentence (`break_after_headings`)."""
        import spacy

        if max_sentence_tokens < 1:
            raise AnnotatorError("--max-sentence-tokens must be at least 1")
        self.max_sentence_tokens = max_sentence_tokens
        self.batch_size = batch_size
        check_pipeline(spacy_model)
        if spacy_model is None:
            self.nlp = spacy.blank("en")
            self.nlp.add_pipe("sentencizer")
            self.name = BLANK_NAME.format(version=spacy.__version__)
        else:
            try:
                nlp = spacy.load(spacy_model)
            except OSError as exc:
                raise AnnotatorError(f"cannot load spaCy pipeline {spacy_model!r}: {exc}") from None
            keep = {"senter", "parser", "sentencizer"} & set(nlp.pipe_names)
            if not keep:
                raise AnnotatorError(
                    f"spaCy pipeline {spacy_model!r} has no parser, senter or "
                    "sentencizer to find sentence boundaries"
                )
            # a disabled senter is enabled when the pipeline has no parser
            if "senter" in nlp.disabled and "parser" not in nlp.pipe_names:
                nlp.enable_pipe("senter")
            self.nlp = nlp
            self.nlp.select_pipes(
                enable=[n for n in nlp.pipe_names if n in keep or n in ("tok2vec", "transformer")]
            )
            self.name = f"{spacy_model} {nlp.meta.get('version', '')} (spaCy {spacy.__version__})"
        for wanted, component, func in (
            (line_breaks, LINE_BREAKS, break_after_headings),
            (list_markers, LIST_MARKERS, join_list_markers),
        ):
            if wanted:
                from spacy.language import Language

                if not Language.has_factory(component):
                    Language.component(component, func=func)
                self.nlp.add_pipe(component, last=True)
        self.name += rule_labels(list_markers, line_breaks)
        self.nlp.max_length = max(self.nlp.max_length, MAX_PIECE_CHARS + 1)

    def split(self, texts: Iterable[str]) -> Iterator[list[Sentence]]:
        """The sentences of each text, in order (an empty list for an empty text)."""
        pieces: list[tuple[int, str]] = []  # (document index, offset) per piece
        piece_texts: list[str] = []
        for index, text in enumerate(texts):
            for offset, piece in cut_text(text, MAX_PIECE_CHARS):
                pieces.append((index, offset))
                piece_texts.append(piece)
            if not text:
                pieces.append((index, -1))
                piece_texts.append("")
        results: dict[int, list[Sentence]] = {}
        for (index, offset), doc in zip(
            pieces, self.nlp.pipe(piece_texts, batch_size=self.batch_size)
        ):
            sentences = results.setdefault(index, [])
            if offset >= 0:
                sentences.extend(self._sentences(doc, offset))
        for index in range(len(results)):
            yield results[index]

    def split_safely(self, texts: list[str]) -> list[list[Sentence] | str]:
        """`split`, except that a text spaCy fails on gives the reason (a string) instead of its
        sentences, and the others are split all the same."""
        try:
            return list(self.split(texts))
        except Exception:  # find the text that failed: one at a time
            results: list[list[Sentence] | str] = []
            for text in texts:
                try:
                    results.extend(self.split([text]))
                except Exception as exc:
                    results.append(f"cannot split into sentences ({type(exc).__name__}: {exc})")
            return results

    def _sentences(self, doc, offset: int) -> Iterator[Sentence]:
        for span in doc.sents:
            words = [t for t in span if not t.is_space]
            for begin in range(0, len(words), self.max_sentence_tokens):
                chunk = words[begin : begin + self.max_sentence_tokens]
                yield Sentence(
                    tokens=[t.text for t in chunk],
                    starts=[offset + t.idx for t in chunk],
                    ends=[offset + t.idx + len(t.text) for t in chunk],
                )


class SplitterProcess:
    """A Segmenter in a child process, so that splitting runs beside tagging, on another core.

    spaCy holds the GIL while it tokenizes: in a thread it would stall the tagger's many short
    torch calls (measured: slower than splitting in line).  The child is a plain
    ``python -m annotator.segmentation`` (not multiprocessing, which would re-run a user's
    script that lacks a ``__main__`` guard); chunks of texts go over its stdin and their
    sentences come back on its stdout as pickles, first in, first out.
    """

    def __init__(
        self,
        spacy_model: str | None = None,
        max_sentence_tokens: int = 250,
        list_markers: bool = False,
        line_breaks: bool = False,
    ) -> None:
        check_pipeline(spacy_model)
        settings = json.dumps(
            {
                "spacy_model": spacy_model,
                "max_sentence_tokens": max_sentence_tokens,
                "list_markers": list_markers,
                "line_breaks": line_breaks,
            }
        )
        # the kernel's death signal follows the starting thread: only the main thread's lives
        # as long as this process
        main = threading.current_thread() is threading.main_thread()
        how = "death-signal" if main else "watch"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "annotator.segmentation", settings, str(os.getpid()), how],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        # requests are written by a thread: a big request and a big reply must not wait on
        # each other's pipe
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(
            target=_write_requests,
            args=(self._process.stdin, self._requests),
            daemon=True,
            name="annotator-splitter",
        ).start()
        self._unread = 0
        weakref.finalize(self, _stop_process, self._process, self._requests)

    @property
    def pid(self) -> int:
        return self._process.pid

    @staticmethod
    def worthwhile() -> bool:
        """More than one CPU for this process."""
        cpus = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        return cpus > 1

    def submit(self, texts: list[str]) -> None:
        """Send texts to split; `result` returns their sentences, in submission order."""
        self._requests.put(texts)
        self._unread += 1

    def result(self) -> list[list[Sentence] | str]:
        try:
            sentences = pickle.load(self._process.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            raise AnnotatorError(
                "the sentence-splitting process stopped unexpectedly "
                f"(exit status {self._process.poll()}); see the messages above"
            ) from None
        self._unread -= 1
        return sentences

    def discard_unread(self) -> None:
        """Drop the replies to requests of an earlier, abandoned run."""
        while self._unread:
            self.result()

    def close(self) -> None:
        _stop_process(self._process, self._requests)


def join_list_markers(doc):
    """A spaCy component after the splitter: a list number and its full stop at the start of a
    text or line ("1. ", "12. ") begin a sentence, and the words after them continue it.

    The rule-based sentencizer ends a sentence at every full stop, so a numbered list item such
    as ``1. Jesper Ronnback ( Sweden ) 25.76`` is cut after ``1.``: the tagger would then see
    the name without its context.
    """
    for token in doc[:-2]:
        after = doc[token.i + 2]
        if not (
            token.text.isdigit()
            and len(token.text) <= MAX_MARKER_DIGITS
            and doc[token.i + 1].text == "."
            and not after.is_space
        ):
            continue
        if token.i == 0 or doc[token.i - 1].is_space and "\n" in doc[token.i - 1].text:
            token.is_sent_start = True
            after.is_sent_start = False
    return doc


def break_after_headings(doc):
    """A spaCy component after the splitter: a blank line ends a sentence, and so does a line
    break after a line that is short or has no lowercase letter.

    The sentencizer only ends sentences at punctuation, so a headline, a dateline
    (``AL-AIN , United Arab Emirates 1996-12-06``), a byline or a table row runs into the next
    line's sentence. Short means under SHORT_LINE_CHARS and under SHORT_LINE_SHARE of the text's
    median line: the lines of hard-wrapped prose, narrow newspaper columns included, go on.
    """
    text = doc.text
    breaks = [t for t in doc[1:-1] if t.is_space and "\n" in t.text]
    if not breaks:
        return doc
    lengths = sorted(len(line.strip()) for line in text.splitlines() if line.strip())
    short = min(SHORT_LINE_CHARS, SHORT_LINE_SHARE * lengths[len(lengths) // 2])
    for token in breaks:
        end = token.idx + token.text.index("\n")
        line = text[text.rfind("\n", 0, end) + 1 : end].strip()
        heading = len(line) < short or not any(c.islower() for c in line)
        if line and (heading or token.text.count("\n") > 1):
            doc[token.i + 1].is_sent_start = True
    return doc


def segmentation_card(
    retokenized: bool, list_markers: bool = False, line_breaks: bool = False
) -> dict[str, Any]:
    """What a model records in its card about the tokens it was trained on and the sentence
    rules it is meant to be used with."""
    import spacy

    return {
        CARD_KEY: {
            "tokenizer": "spacy.blank('en')",
            "spacy_version": spacy.__version__,
            "retokenized": retokenized,
            "list_markers": list_markers,
            "line_breaks": line_breaks,
        }
    }


def segmenter_settings(tagger) -> dict[str, Any]:
    """The Segmenter options a model was trained for (none for models trained on corpus
    tokens); warns when its tokens came from another spaCy version than the one installed."""
    from importlib.metadata import version

    card = getattr(tagger, "model_card", None)
    stored = (card or {}).get(CARD_KEY)
    if stored and stored.get("spacy_version") != version("spacy"):
        logging.getLogger("annotator").warning(
            "the model was trained on tokens of spaCy %s; spaCy %s is installed (its tokenizer "
            "may split some words differently)",
            stored.get("spacy_version"),
            version("spacy"),
        )
    return card_settings(card)


def card_settings(card: dict[str, Any] | None) -> dict[str, Any]:
    """The sentence rules a model card names (no warning: see `segmenter_settings`)."""
    stored = (card or {}).get(CARD_KEY) or {}
    return {rule: True for rule in ("list_markers", "line_breaks") if stored.get(rule)}


def _write_requests(pipe, requests: queue.SimpleQueue) -> None:
    while (texts := requests.get()) is not None:
        try:
            pickle.dump(texts, pipe, protocol=pickle.HIGHEST_PROTOCOL)
            pipe.flush()
        except OSError:  # the child has gone: `result` reports it
            return
    pipe.close()


def _stop_process(process: subprocess.Popen, requests: queue.SimpleQueue) -> None:
    """End of input for the child (it exits on EOF); killed if it does not go quietly."""
    requests.put(None)
    if process.stdout is not None:  # a reply nobody will read must not keep the child writing
        process.stdout.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _serve(settings: str, parent: int | None = None, death_signal: bool = True) -> None:
    """The child's loop: a list of texts in, their sentences out (or, for a text spaCy fails
    on, the reason), until end of input."""
    # Ctrl-C reaches the whole process group: the parent handles it and closes our input
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent, death_signal)  # a killed parent leaves no splitter behind
    segmenter = Segmenter(**json.loads(settings))
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            try:
                texts = pickle.load(source)
            except EOFError:
                return
            pickle.dump(segmenter.split_safely(texts), sink, protocol=pickle.HIGHEST_PROTOCOL)
            sink.flush()
    except BrokenPipeError:  # the parent has stopped reading: it is ending
        os._exit(0)


def cut_text(text: str, limit: int) -> Iterator[tuple[int, str]]:
    """Pieces of at most `limit` characters, cut after a newline or space where possible."""
    start = 0
    while start < len(text):
        end = min(start + limit, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            if cut > start:
                end = cut + 1
        yield start, text[start:end]
        start = end


if __name__ == "__main__":
    if json.loads(sys.argv[1]).get("spacy_model") is None:
        # thinc imports torch when it can: memory the rule-based splitter never uses
        sys.modules["torch"] = None  # type: ignore[assignment]
    _serve(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else None,
        len(sys.argv) <= 3 or sys.argv[3] == "death-signal",
    )

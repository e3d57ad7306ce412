"""`annotator bench`: how fast is annotation, side by side with the ways Flair and spaCy are used.

Every row runs on the same documents, in its own fresh Python process (so its peak RSS is its
own: `VmHWM` of that process, which a new process image starts afresh), and is timed after the
model is loaded and warmed up on a few unrelated sentences:

  1  Flair as its tutorial uses it: split each document (the same spaCy splitter), build flair
     Sentences, `tagger.predict(sentences)` per document (split time included)
  2  Flair's `tagger.predict` over all (pre-split) sentences, at mini-batch 32 and each other
     `--batch-sizes` candidate; the fastest is marked best
  3p the fast engine's `predict` alone over the same pre-split sentences (diagnostic)
  3  `annotator annotate` end to end: read JSONL -> split -> tag -> write Parquet, via
     `annotator.pipeline.annotate`
  4  the model's forward pass alone on prepared, batched input (FastSequenceTagger.forward_packed):
     the ceiling for (3)
  5  spaCy's own NER (`nlp.pipe(texts)` with only the components NER needs), when a pipeline
     is installed or named (--spacy-ner / ANNOTATOR_SPACY_NER)

Words are counted once for all rows: the spaCy tokens (whitespace dropped) of the documents.
Outputs of rows 1, 2, 3p and 3 are compared with (2) at batch 32: identical spans and labels,
scores within 1e-4. `--memory` also runs (3) on the documents repeated 10x and compares peaks.
`--stand-in tutorial` adds a section for a same-shape stand-in of the Flair tutorial's
GloVe + news-forward/backward tagger (random weights of the real sizes; speed does not depend
on the weights), built in code and never downloaded.

Workers are this module run as `python -m annotator.bench --worker SPEC.json`.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from annotator import __version__
from annotator.errors import AnnotatorError

SCORE_TOLERANCE = 1e-4
DEFAULT_DOCS = 200
DOC_WORDS = 350  # CoNLL tokens per generated document: 200 of them are ~76k spaCy tokens
MEMORY_FACTOR = 10
STAND_IN_DOCS = 5
STAND_IN_VOCAB = 400_000
STAND_IN_CHARS = 275
DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "conllpp"
WARMUP_TEXTS = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday to discuss the budget.",
    "Shares of Siemens AG rose 3 percent in Frankfurt trading, a spokesman said.",
    "The United Nations said on Friday that aid had reached Nairobi.",
]


@dataclass
class BenchOptions:
    inputs: tuple[str, ...] = ()
    model: str | None = None
    device: str = "auto"
    json_file: str | None = None
    docs: int | None = None  # first N input documents; generated: how many (default 200)
    corpus: str | None = None  # CoNLL folder to generate documents from (default ../shared/...)
    text_field: str = "text"
    batch_sizes: tuple[int, ...] = (32, 128, 512)
    spacy_ner: str | None = None  # name or path; "off" skips; None: env, then en_core_web_sm
    stand_in: str | None = None  # "tutorial"
    stand_in_docs: int = STAND_IN_DOCS
    stand_in_vocab: int = STAND_IN_VOCAB
    memory: bool = False
    repeat: int = 1
    isolate: bool = True  # each row in a fresh process (per-row peak RSS)
    threads: int | None = None  # torch intra-op threads in every row (default: torch's own)
    workdir: str | None = None  # keep intermediate files here (default: a temp dir)


# ----------------------------------------------------------------------------------------------
# input documents
# ----------------------------------------------------------------------------------------------
_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", "%", ")", "]", "}", "...", "'s", "'S", "n't",
                    "N'T", "'re", "'ve", "'ll", "'d", "'m", "'", "''"}
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


_PEOPLE = ["John Smith", "Maria Garcia", "Angela Merkel", "Li Wei", "Ahmed Khan", "Anna Berg",
           "Peter Brown", "Sofia Rossi", "David Cohen", "Yuki Tanaka", "Carlos Silva"]
_ORGS = ["Reuters", "Siemens", "the United Nations", "Microsoft", "Deutsche Bank", "Toyota",
         "the World Bank", "Nestle", "Oxfam", "Airbus"]
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
            sentence = re.sub(r"\{(\w+)\}", lambda m: rng.choice(pools[m.group(1)]),
                              rng.choice(_TEMPLATES))
            sentences.append(sentence)
            size += len(sentence.split()) + 1
        texts.append(" ".join(sentences))
    return texts


def load_documents(options: BenchOptions) -> tuple[list[str], str]:
    """The texts to benchmark, and where they came from."""
    if options.inputs:
        from annotator.readers import Document, ReaderOptions, expand_inputs, read_documents

        texts = []
        for record in read_documents(expand_inputs(list(options.inputs)),
                                     ReaderOptions(text_field=options.text_field)):
            if isinstance(record, Document):
                texts.append(record.text)
                if options.docs is not None and len(texts) >= options.docs:
                    break
        if not texts:
            raise AnnotatorError(f"no documents in {', '.join(options.inputs)}")
        return texts, ", ".join(options.inputs)
    count = options.docs if options.docs is not None else DEFAULT_DOCS
    corpus = Path(options.corpus) if options.corpus else DEFAULT_CORPUS
    if corpus.is_dir() and _conll_files(corpus):
        texts = conll_documents(corpus, count)
        if texts:
            return texts, f"generated from CoNLL documents in {corpus}"
    elif options.corpus:
        raise AnnotatorError(f"--corpus {options.corpus}: not a folder of CoNLL files")
    return synthetic_documents(count), "generated from templates (no CoNLL corpus found)"


# ----------------------------------------------------------------------------------------------
# measurement helpers (used inside workers)
# ----------------------------------------------------------------------------------------------
def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident set size in MB (VmHWM: a new process image starts it afresh;
    ru_maxrss would carry over the forking parent's peak across exec on Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid != "self":
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time so far of another (running) process, from /proc; 0 where there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock:
    """Times a block: wall and process CPU seconds, RSS before it and the peak RSS right after.

    `helpers`: pids of child processes working for the row (annotate's sentence splitter):
    their CPU time and peak RSS are added in.
    """

    def __init__(self, device=None, helpers: tuple[int, ...] = ()) -> None:
        self.device = device
        self.helpers = helpers

    def __enter__(self) -> "_Clock":
        self.loaded = rss_mb()
        if self.device is not None:
            _sync(self.device)
        self.cpu = time.process_time() + sum(map(cpu_seconds, self.helpers))
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device is not None:
            _sync(self.device)
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = time.process_time() + sum(map(cpu_seconds, self.helpers)) - self.cpu
        self.peak = peak_rss_mb() + sum(peak_rss_mb(pid) for pid in self.helpers)

    def result(self, **more: Any) -> dict[str, Any]:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "peak_rss_mb": self.peak,
                "loaded_rss_mb": self.loaded, **more}


def _read_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _load_split(path: str):
    import pickle

    with open(path, "rb") as handle:
        return pickle.load(handle)


def _entities(texts, per_doc, spans) -> list[list]:
    """Token spans of every sentence -> [doc, sentence, start, end, label, score] rows."""
    from annotator.tagging import entities_of

    rows, position = [], 0
    for index, (text, sentences) in enumerate(zip(texts, per_doc)):
        found = spans[position:position + len(sentences)]
        position += len(sentences)
        for e in entities_of(text, sentences, found):
            rows.append([index, e.sentence, e.start, e.end, e.label, float(e.score)])
    return rows


def _flair_spans(tagger, sentence) -> list[tuple]:
    label_type = tagger.label_type
    return [(span.tokens[0].idx - 1, span.tokens[-1].idx, span.get_label(label_type).value,
             float(span.get_label(label_type).score)) for span in sentence.get_spans(label_type)]


def _warm_tokens() -> list[list[str]]:
    return [re.findall(r"\w+|[^\w\s]", text) for text in WARMUP_TEXTS]


# ----------------------------------------------------------------------------------------------
# the rows (each runs in a worker; returns a result dict)
# ----------------------------------------------------------------------------------------------
def _row_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Split every document once; the pre-split sentences feed rows 2, 3p and 4."""
    import pickle

    from annotator.segmentation import Segmenter

    texts = _read_texts(spec["docs"])
    per_doc = list(Segmenter().split(texts))
    with open(spec["split"], "wb") as handle:
        pickle.dump(per_doc, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return {"documents": len(texts), "sentences": sum(len(d) for d in per_doc),
            "words": sum(len(s) for d in per_doc for s in d),
            "characters": sum(len(t) for t in texts)}


def _row_flair_docs(spec: dict[str, Any]) -> dict[str, Any]:
    from flair.data import Sentence as FlairSentence

    from annotator.models import load_tagger
    from annotator.segmentation import Segmenter
    from annotator.training import choose_device

    device = choose_device(spec["device"])
    tagger = load_tagger(spec["model"], device=str(device))
    segmenter = Segmenter()
    texts = _read_texts(spec["docs"])
    tagger.predict([FlairSentence(t) for t in _warm_tokens()])
    done = []
    with _Clock(device) as clock:
        for text in texts:
            sentences = next(segmenter.split([text]))
            flair_sentences = [FlairSentence(s.tokens) for s in sentences]
            if flair_sentences:
                tagger.predict(flair_sentences)  # as the tutorial does: mini-batch 32
            done.append((sentences, flair_sentences))
    per_doc = [sentences for sentences, _ in done]
    spans = [_flair_spans(tagger, s) for _, flair_sentences in done for s in flair_sentences]
    return clock.result(device=_device_name(device), engine="flair",
                        words=sum(len(s) for d in per_doc for s in d),
                        entities=_entities(texts, per_doc, spans))


def _row_tagger(spec: dict[str, Any]) -> dict[str, Any]:
    """Row 2 (engine flair, a batch size) and 3p (the fast engine) on pre-split sentences."""
    from annotator.models import load_tagger
    from annotator.tagging import FlairEngine, make_engine
    from annotator.training import choose_device

    device = choose_device(spec["device"])
    tagger = load_tagger(spec["model"], device=str(device))
    if spec["engine"] == "flair":
        engine = FlairEngine(tagger, batch_size=spec["batch_size"])
    else:
        engine = make_engine(tagger, device=device, engine="auto")
    texts = _read_texts(spec["docs"])
    per_doc = _load_split(spec["split"])
    flat = [s.tokens for d in per_doc for s in d]
    engine.predict(_warm_tokens())
    with _Clock(device) as clock:
        spans = engine.predict(flat)
    return clock.result(device=_device_name(device), engine=engine.name,
                        words=sum(len(t) for t in flat), entities=_entities(texts, per_doc, spans),
                        max_tokens_per_batch=getattr(engine, "max_tokens_per_batch", None))


def _row_annotate(spec: dict[str, Any]) -> dict[str, Any]:
    from annotator.pipeline import AnnotateOptions, Annotator, annotate

    annotator = Annotator(spec["model"], device=spec["device"])
    list(annotator.annotate_texts(WARMUP_TEXTS))
    options = AnnotateOptions(model=spec["model"], device=spec["device"], progress=False)
    output = spec["output"]
    helpers = (annotator.splitter.pid,) if annotator.splitter is not None else ()
    with _Clock(annotator.device, helpers) as clock:
        summary = annotate([spec["docs"]], output, options, annotator=annotator)
    result = clock.result(device=_device_name(annotator.device), engine=annotator.engine.name,
                          words=summary.words, documents=summary.documents,
                          max_tokens_per_batch=getattr(annotator.engine, "max_tokens_per_batch", None))
    if spec.get("entities", True):
        import pyarrow.parquet as pq

        table = pq.read_table(output, columns=["doc_id", "sentence", "start", "end", "label", "score"])
        columns = [table.column(name).to_pylist() for name in table.column_names]
        result["entities"] = [[int(d), s, a, b, str(l), float(x)] for d, s, a, b, l, x in zip(*columns)]
    os.unlink(output)
    return result


def _row_forward(spec: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: the fast engine's forward pass alone (no preparation, decoding or spans), on
    the batches the pipeline would cut."""
    import torch

    from annotator.fast_tagger import FastSequenceTagger, _eval_mode
    from annotator.models import load_tagger
    from annotator.tagging import make_engine
    from annotator.training import choose_device

    device = choose_device(spec["device"])
    tagger = load_tagger(spec["model"], device=str(device))
    reason = FastSequenceTagger.unsupported_reason(tagger)
    if reason is not None:
        return {"skipped": f"the fast engine does not support this model ({reason})"}
    fast = make_engine(tagger, device=device, engine="fast")
    per_doc = _load_split(spec["split"])
    flat = [s.tokens for d in per_doc for s in d]
    fast.emissions(_warm_tokens())
    with torch.inference_mode(), _eval_mode(tagger):
        prepared = [fast.prepare(batch) for _, batch, _ in fast._batches(flat)]
        with _Clock(device) as clock:
            for batch in prepared:
                fast.forward_packed(batch)
    return clock.result(device=_device_name(device), engine="fast (forward only)",
                        words=sum(len(t) for t in flat), batches=len(prepared),
                        max_tokens_per_batch=fast.max_tokens_per_batch)


def spacy_ner_target(option: str | None) -> str | None:
    """The spaCy pipeline for row 5: --spacy-ner, else ANNOTATOR_SPACY_NER, else en_core_web_sm
    when installed; None when there is none (or 'off')."""
    target = option or os.environ.get("ANNOTATOR_SPACY_NER") or None
    if target == "off":
        return None
    if target:
        return target
    import importlib.util

    return "en_core_web_sm" if importlib.util.find_spec("en_core_web_sm") else None


def _row_spacy(spec: dict[str, Any]) -> dict[str, Any]:
    import spacy

    try:
        nlp = spacy.load(spec["spacy_ner"])
    except (OSError, ImportError, ValueError) as exc:
        return {"skipped": f"cannot load spaCy pipeline {spec['spacy_ner']!r}: {exc}"}
    if "ner" not in nlp.pipe_names:
        return {"skipped": f"spaCy pipeline {spec['spacy_ner']!r} has no ner component"}
    needed = {"ner"}
    for name, component in nlp.pipeline:  # a shared tok2vec that ner listens to
        if "ner" in (getattr(component, "listening_components", None) or []):
            needed.add(name)
    nlp.select_pipes(enable=[name for name in nlp.pipe_names if name in needed])
    texts = _read_texts(spec["docs"])
    list(nlp.pipe(WARMUP_TEXTS))
    entities = tokens = 0
    with _Clock() as clock:
        for doc in nlp.pipe(texts):
            entities += len(doc.ents)
            tokens += len(doc)
    name = f"{nlp.meta.get('lang', '')}_{nlp.meta.get('name', '')} {nlp.meta.get('version', '')}"
    return clock.result(device="cpu", engine=f"spaCy {spacy.__version__} {name}: "
                                             f"{', '.join(nlp.pipe_names)}",
                        own_tokens=tokens, entity_count=entities)


def _row_build_stand_in(spec: dict[str, Any]) -> dict[str, Any]:
    """The Flair tutorial's tagger shape (GloVe 100-d + news-forward/backward LMs, BiLSTM 256 +
    CRF) with random weights, saved where the rows load it from."""
    import torch
    from flair.data import Dictionary
    from flair.embeddings import FlairEmbeddings, StackedEmbeddings, WordEmbeddings
    from flair.models import LanguageModel, SequenceTagger

    torch.manual_seed(0)
    folder = Path(spec["output"]).parent
    # GloVe stand-in: the documents' (lower-cased) words first, so lookups hit like GloVe's do
    vocab: dict[str, int] = {}
    for document in _load_split(spec["split"]):
        for sentence in document:
            for token in sentence.tokens:
                vocab.setdefault(token.lower(), len(vocab))
    filler = 0
    while len(vocab) < spec["vocab"]:
        vocab.setdefault(f"w{filler:07d}", len(vocab))
        filler += 1
    words = WordEmbeddings(None, vocab=vocab, embedding_length=100, name="glove")
    # news-forward/backward stand-ins: 1-layer LSTM LMs, hidden 2048, char embedding 100
    chars = Dictionary(add_unk=False)
    for code in [10, *range(32, 127), *range(160, 1024)]:
        if len(chars) >= STAND_IN_CHARS:
            break
        chars.add_item(chr(code))
    lms = []
    for forward in (True, False):
        lm = LanguageModel(chars, is_forward_lm=forward, hidden_size=2048, nlayers=1, embedding_size=100)
        path = folder / f"stand-in-news-{'forward' if forward else 'backward'}.pt"
        lm.save(path)
        lms.append(FlairEmbeddings(str(path)))
    tags = Dictionary(add_unk=False)
    tags.add_item("O")
    for label in ("PER", "LOC", "ORG", "MISC"):
        for prefix in "SBEI":
            tags.add_item(f"{prefix}-{label}")
    tagger = SequenceTagger(hidden_size=256, embeddings=StackedEmbeddings([words, *lms]),
                            tag_dictionary=tags, tag_type="ner", use_crf=True)
    with torch.no_grad():  # favour O: some entities (span work is part of the cost), not all tags
        tagger.linear.bias[tagger.label_dictionary.get_idx_for_item("O")] += spec.get("o_bias", 1.0)
    tagger.save(spec["output"])
    return {"parameters": sum(p.numel() for p in tagger.parameters()), "vocab": len(vocab),
            "chars": len(chars), "file_mb": os.path.getsize(spec["output"]) / 1e6}


ROWS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prepare": _row_prepare, "flair-docs": _row_flair_docs, "tagger": _row_tagger,
    "annotate": _row_annotate, "forward": _row_forward, "spacy": _row_spacy,
    "build-stand-in": _row_build_stand_in,
}


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("threads") and spec["kind"] not in ("prepare", "spacy"):
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(spec["threads"])
        try:
            return {**ROWS[spec["kind"]](spec), "threads": torch.get_num_threads()}
        finally:
            torch.set_num_threads(previous)
    result = ROWS[spec["kind"]](spec)
    if spec["kind"] not in ("prepare", "spacy", "build-stand-in") and "skipped" not in result:
        import torch

        result["threads"] = torch.get_num_threads()
    return result


def _worker_main(argv: list[str]) -> int:
    spec_path = Path(argv[argv.index("--worker") + 1])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    import logging

    logging.getLogger("flair").setLevel(logging.WARNING)
    result = run_spec(spec)
    Path(spec["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------------------------
# orchestration (the parent stays light: no torch, flair or spaCy needed here)
# ----------------------------------------------------------------------------------------------
class _Runner:
    def __init__(self, workdir: Path, isolate: bool, log: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.isolate = isolate
        self.log = log
        self.count = 0

    def __call__(self, spec: dict[str, Any], what: str) -> dict[str, Any]:
        self.count += 1
        spec = {**spec, "result": str(self.workdir / f"result-{self.count}.json")}
        self.log(f"bench: {what} ...")
        started = time.perf_counter()
        if not self.isolate:
            result = run_spec(spec)
        else:
            spec_path = self.workdir / f"spec-{self.count}.json"
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            log_path = self.workdir / f"worker-{self.count}.log"
            env = dict(os.environ)
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
            if spec.get("threads"):
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec["threads"])
            with open(log_path, "w", encoding="utf-8") as log_file:
                code = subprocess.call([sys.executable, "-m", "annotator.bench", "--worker",
                                        str(spec_path)], stdout=log_file, stderr=subprocess.STDOUT,
                                       env=env)
            if code != 0:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise AnnotatorError(f"bench worker for {what} failed (exit {code}):\n{tail}")
            result = json.loads(Path(spec["result"]).read_text(encoding="utf-8"))
        if "seconds" in result:
            self.log(f"bench: {what}: {result['seconds']:.2f} s timed "
                     f"({time.perf_counter() - started:.0f} s with loading)")
        elif "skipped" in result:
            self.log(f"bench: {what}: skipped ({result['skipped']})")
        return result


def compare_entities(reference: list[list], other: list[list],
                     tolerance: float = SCORE_TOLERANCE) -> tuple[bool, str]:
    """Identical spans and labels, scores within `tolerance`."""
    ref = {tuple(e[:5]): e[5] for e in reference}
    got = {tuple(e[:5]): e[5] for e in other}
    if len(ref) != len(reference) or len(got) != len(other):
        return False, "duplicate spans"
    missing, extra = len(ref.keys() - got.keys()), len(got.keys() - ref.keys())
    worst = max((abs(ref[k] - got[k]) for k in ref.keys() & got.keys()), default=0.0)
    if missing or extra:
        return False, f"{missing} spans missing, {extra} extra of {len(ref)}"
    if worst > tolerance:
        return False, f"{len(ref)} spans equal, max score difference {worst:.2g}"
    return True, f"{len(ref)} spans, max score difference {worst:.1g}"


@dataclass
class Row:
    key: str
    label: str
    timed: str
    batch: str = ""
    words: int = 0
    seconds: float | None = None
    words_per_second: float | None = None
    ratio: float | None = None  # to (2) at batch 32
    cpu_seconds: float | None = None  # process CPU time: far less sensitive to other load
    words_per_cpu_second: float | None = None
    cpu_ratio: float | None = None  # words per CPU second, to (2) at batch 32
    peak_rss_mb: float | None = None
    loaded_rss_mb: float | None = None
    device: str = ""
    engine: str = ""
    identical: bool | None = None
    comparison: str = ""
    entities: int | None = None
    runs: list[float] = field(default_factory=list)
    skipped: str | None = None
    best: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _best_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, its CPU time the least of all runs (each is a best-of on its own), with
    the highest peak RSS of all runs (memory is not noise)."""
    timed = [r for r in results if "seconds" in r]
    if not timed:
        return results[0]
    best = dict(min(timed, key=lambda r: r["seconds"]))
    best["cpu_seconds"] = min(r["cpu_seconds"] for r in timed)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in timed)
    best["runs"] = [r["seconds"] for r in timed]
    best["cpu_runs"] = [r["cpu_seconds"] for r in timed]
    return best


def run_section(name: str, model: str, docs_path: Path, split_path: Path, words: int,
                options: BenchOptions, run: _Runner, workdir: Path, with_spacy: bool,
                memory_docs: Path | None) -> dict[str, Any]:
    """All rows for one model on one document set; rows run round-robin `repeat` times."""
    base = {"model": model, "device": options.device, "docs": str(docs_path), "split": str(split_path),
            "threads": options.threads}
    plans: list[tuple[str, str, str, str, dict[str, Any]]] = []  # key, label, timed, batch, spec
    sizes = list(dict.fromkeys([32, *options.batch_sizes]))
    plans.append(("2@32", "(2) Flair predict, all sentences", "predict on pre-split sentences", "32",
                  {**base, "kind": "tagger", "engine": "flair", "batch_size": 32}))
    plans.append(("3", "(3) annotator annotate, end to end", "read JSONL > split > tag > Parquet",
                  "", {**base, "kind": "annotate", "output": str(workdir / f"{name}-out.parquet")}))
    plans.append(("3p", "(3p) fast engine predict only", "predict on pre-split sentences", "",
                  {**base, "kind": "tagger", "engine": "auto"}))
    plans.append(("4", "(4) forward pass only (ceiling)", "torch forward on prepared batches", "",
                  {**base, "kind": "forward"}))
    plans.append(("1", "(1) Flair tutorial, per document", "split + predict each document", "32",
                  {**base, "kind": "flair-docs"}))
    for size in sizes[1:]:
        plans.append((f"2@{size}", "(2) Flair predict, all sentences", "predict on pre-split sentences",
                      str(size), {**base, "kind": "tagger", "engine": "flair", "batch_size": size}))
    target = spacy_ner_target(options.spacy_ner) if with_spacy else None
    if with_spacy:
        plans.append(("5", "(5) spaCy NER, nlp.pipe", "nlp.pipe(texts), NER components only", "",
                      {**base, "kind": "spacy", "spacy_ner": target}))
    results: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in plans}
    for attempt in range(max(1, options.repeat)):
        for key, label, _, batch, spec in plans:
            if key == "5" and target is None:
                continue
            suffix = f" (run {attempt + 1}/{options.repeat})" if options.repeat > 1 else ""
            results[key].append(run(spec, f"[{name}] {label}{' @' + batch if batch else ''}{suffix}"))

    rows: dict[str, Row] = {}
    for key, label, timed, batch, spec in plans:
        row = Row(key=key, label=label, timed=timed, batch=batch)
        rows[key] = row
        if not results[key]:
            row.skipped = ("no spaCy NER pipeline (install en_core_web_sm, or give --spacy-ner "
                           "NAME|PATH or ANNOTATOR_SPACY_NER)")
            continue
        best = _best_of(results[key])
        if "skipped" in best:
            row.skipped = best["skipped"]
            continue
        row.seconds = best["seconds"]
        row.runs = best["runs"]
        row.extra["cpu_runs"] = best["cpu_runs"]
        row.cpu_seconds = best["cpu_seconds"]
        row.words_per_cpu_second = words / row.cpu_seconds if row.cpu_seconds > 0 else None
        row.words = words
        row.words_per_second = words / row.seconds if row.seconds > 0 else None
        row.peak_rss_mb = best["peak_rss_mb"]
        row.loaded_rss_mb = best.get("loaded_rss_mb")
        row.device = best.get("device", "")
        row.engine = best.get("engine", "")
        if "threads" in best:
            row.extra["torch_threads"] = best["threads"]
        if best.get("max_tokens_per_batch") and not batch:
            row.batch = f"{best['max_tokens_per_batch']} tok"
        if "words" in best and best["words"] != words:
            row.extra["own_words"] = best["words"]
        for extra in ("own_tokens", "entity_count", "batches", "documents"):
            if extra in best:
                row.extra[extra] = best[extra]
        if "entities" in best:
            row.extra["_entities"] = best["entities"]
            row.entities = len(best["entities"])
        elif "entity_count" in best:
            row.entities = best["entity_count"]
    reference = rows["2@32"]
    ref_entities = reference.extra.get("_entities")
    for row in rows.values():
        if row.words_per_second and reference.words_per_second:
            row.ratio = row.words_per_second / reference.words_per_second
        if row.words_per_cpu_second and reference.words_per_cpu_second:
            row.cpu_ratio = row.words_per_cpu_second / reference.words_per_cpu_second
        mine = row.extra.pop("_entities", None) if row is not reference else None
        if row.key == "5":
            row.comparison = "another model"
        elif row.key == "4":
            row.comparison = "no decoding"
        elif row is reference:
            row.comparison = "reference"
        elif mine is not None and ref_entities is not None:
            row.identical, row.comparison = compare_entities(ref_entities, mine)
    reference.extra.pop("_entities", None)
    flair_rows = [rows[f"2@{s}"] for s in sizes if rows[f"2@{s}"].words_per_second]
    if flair_rows:
        max(flair_rows, key=lambda r: r.words_per_second).best = True

    memory = None
    if memory_docs is not None:
        spec = {**base, "kind": "annotate", "docs": str(memory_docs), "entities": False,
                "output": str(workdir / f"{name}-memory.parquet")}
        big = _best_of([run(spec, f"[{name}] (3) annotate on the corpus x{MEMORY_FACTOR} (memory)")])
        one = rows["3"]
        memory = {"factor": MEMORY_FACTOR, "peak_rss_mb_1x": one.peak_rss_mb,
                  "peak_rss_mb_10x": big["peak_rss_mb"], "words_10x": big["words"],
                  "seconds_10x": big["seconds"],
                  "words_per_second_10x": big["words"] / big["seconds"] if big["seconds"] else None,
                  "growth_percent": 100.0 * (big["peak_rss_mb"] / one.peak_rss_mb - 1.0)
                  if one.peak_rss_mb else None,
                  "goal_percent": 10.0}
        memory["met"] = memory["growth_percent"] is not None and memory["growth_percent"] < 10.0
    return {"name": name, "model": model, "rows": [asdict(r) for r in _ordered(rows)],
            "goals": _goals(rows), "memory": memory}


_ORDER = ["1", "2@32", "2@", "3", "3p", "4", "5"]


def _ordered(rows: dict[str, Row]) -> list[Row]:
    def rank(row: Row) -> tuple[int, int]:
        if row.key.startswith("2@") and row.key != "2@32":
            return (2, int(row.key[2:]))
        return (_ORDER.index(row.key), 0)

    return sorted(rows.values(), key=rank)


def _goals(rows: dict[str, Row]) -> list[dict[str, Any]]:
    """The issue's targets, judged on wall-clock words/s (CPU-time ratios alongside)."""
    def ratio(key: str, other: str, attribute: str) -> float | None:
        mine, theirs = rows.get(key), rows.get(other)
        a = getattr(mine, attribute) if mine else None
        b = getattr(theirs, attribute) if theirs else None
        return a / b if a and b else None

    goals = []
    for name, key, other, target in (("(3) vs (2) at batch 32", "3", "2@32", 3.0),
                                     ("(3) vs (5) spaCy NER", "3", "5", 2.0),
                                     ("(3) vs (4) forward ceiling", "3", "4", 0.7)):
        wall = ratio(key, other, "words_per_second")
        goals.append({"goal": name, "target": target, "ratio": wall,
                      "cpu_ratio": ratio(key, other, "words_per_cpu_second"),
                      "met": None if wall is None else wall >= target})
    return goals


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_section(section: dict[str, Any], per_row_rss: bool) -> str:
    lines = [f"== {section['title']} ==", section["summary"]]
    header = (f"{'row':<38} {'batch':>9} {'seconds':>8} {'words/s':>9} {'x (2)@32':>8} "
              f"{'cpu s':>7} {'x cpu':>6} {'peak RSS':>9}  {'device':<6} identical")
    lines += [header, "-" * len(header)]
    star = "" if per_row_rss else "*"
    for row in section["rows"]:
        label = row["label"] + (" [best]" if row["best"] and row["key"] != "2@32" else "")
        if row["skipped"]:
            lines.append(f"{label:<38} {'':>9} skipped: {row['skipped']}")
            continue
        if row["identical"] is None:
            same = row["comparison"] if row["comparison"] in ("reference", "another model",
                                                              "no decoding") else "-"
            same = {"reference": "(reference)", "another model": "n/a (another model)",
                    "no decoding": "n/a (no decoding)"}.get(same, same)
        else:
            same = ("yes" if row["identical"] else "NO") + f" ({row['comparison']})"
        lines.append(f"{label:<38} {row['batch']:>9} {_fmt(row['seconds'], '.2f'):>8} "
                     f"{_fmt(row['words_per_second'], ',.0f'):>9} {_fmt(row['ratio'], '.2f', 'x'):>8} "
                     f"{_fmt(row['cpu_seconds'], '.2f'):>7} {_fmt(row['cpu_ratio'], '.2f', 'x'):>6} "
                     f"{_fmt(row['peak_rss_mb'], ',.0f', ' MB' + star):>9}  "
                     f"{row['device'].split(' ')[0]:<6} {same}")
    goals = []
    for goal in section["goals"]:
        mark = "n/a" if goal["met"] is None else ("met" if goal["met"] else "NOT met")
        goals.append(f"  {goal['goal']}: {_fmt(goal['ratio'], '.2f', 'x')} (goal >= "
                     f"{goal['target']:.1f}x: {mark}; by CPU time "
                     f"{_fmt(goal.get('cpu_ratio'), '.2f', 'x')})")
    lines.append("goals (wall-clock words/s):")
    lines += goals
    memory = section.get("memory")
    if memory:
        growth = memory["growth_percent"]
        lines.append(f"memory: (3) peak RSS {memory['peak_rss_mb_1x']:,.0f} MB on the corpus, "
                     f"{memory['peak_rss_mb_10x']:,.0f} MB on it x{memory['factor']} "
                     f"({memory['words_10x']:,} words, {_fmt(memory['words_per_second_10x'], ',.0f')}"
                     f" words/s): {_fmt(growth, '+.1f', '%')} (goal < {memory['goal_percent']:.0f}%, "
                     f"{'met' if memory['met'] else 'NOT met'})")
    if not per_row_rss:
        lines.append("* --no-isolate: peak RSS of the whole process so far, not of the row")
    return "\n".join(lines)


def _environment(options: BenchOptions) -> dict[str, Any]:
    env = {"annotator_version": __version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "device_option": options.device,
           "isolation": "a fresh process per row" if options.isolate else "none (one process)",
           "torch_threads_option": options.threads,
           "env": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                           "MKL_NUM_THREADS", "ANNOTATOR_SPACY_NER")}}
    try:
        from importlib.metadata import version

        for package in ("torch", "flair", "spacy", "pyarrow"):
            env[f"{package}_version"] = version(package)
    except Exception:  # pragma: no cover - metadata missing in odd installs
        pass
    return env


def _write_docs(path: Path, texts: list[str], copies: int = 1) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for copy in range(copies):
            for index, text in enumerate(texts):
                doc_id = str(index) if copies == 1 else f"{copy}-{index}"
                handle.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")


def _resolve_model(model: str | None) -> str | None:
    from annotator.models import DEFAULT_MODEL

    if model:
        return model
    return str(DEFAULT_MODEL) if DEFAULT_MODEL.exists() else None


def run_bench(options: BenchOptions, echo: Callable[[str], None] = print,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints the table(s) with `echo`, progress with `log`; returns the report
    (also written to `options.json_file`)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if options.stand_in not in (None, "tutorial"):
        raise AnnotatorError("--stand-in: the only stand-in is 'tutorial'")
    if options.repeat < 1 or (options.docs is not None and options.docs < 1):
        raise AnnotatorError("--repeat and --docs must be at least 1")
    if any(size < 1 for size in options.batch_sizes):
        raise AnnotatorError("--batch-sizes must be positive")
    model = _resolve_model(options.model)
    if model is None and options.stand_in is None:
        raise AnnotatorError("no --model given and no default model is packaged; pass --model "
                             "PATH (or --stand-in tutorial to bench only the stand-in)")
    texts, origin = load_documents(options)
    keep = tempfile.mkdtemp(prefix="annotator-bench-") if options.workdir is None else options.workdir
    workdir = Path(keep)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Runner(workdir, options.isolate, log)
    report: dict[str, Any] = {"environment": _environment(options), "input": origin,
                              "options": {k: v for k, v in asdict(options).items()
                                          if k not in ("workdir",)}, "sections": []}
    try:
        docs_path = workdir / "docs.jsonl"
        _write_docs(docs_path, texts)
        split_path = workdir / "split.pkl"
        prepared = run({"kind": "prepare", "docs": str(docs_path), "split": str(split_path)},
                       "splitting the documents once (spaCy tokens = the words counted)")
        sections = []
        if model is not None:
            memory_docs = None
            if options.memory:
                memory_docs = workdir / "docs-x10.jsonl"
                _write_docs(memory_docs, texts, copies=MEMORY_FACTOR)
            section = run_section("model", model, docs_path, split_path, prepared["words"], options,
                                  run, workdir, with_spacy=True, memory_docs=memory_docs)
            section.update(title=f"model {model}", documents=prepared["documents"],
                           sentences=prepared["sentences"], words=prepared["words"],
                           characters=prepared["characters"])
            sections.append(section)
        if options.stand_in == "tutorial":
            sub_texts = texts[:options.stand_in_docs]
            sub_docs = workdir / "docs-stand-in.jsonl"
            _write_docs(sub_docs, sub_texts)
            sub_split = workdir / "split-stand-in.pkl"
            sub = run({"kind": "prepare", "docs": str(sub_docs), "split": str(sub_split)},
                      "splitting the stand-in's documents")
            stand_in_model = workdir / "stand-in-tutorial.pt"
            built = run({"kind": "build-stand-in", "split": str(split_path),
                         "output": str(stand_in_model), "vocab": options.stand_in_vocab},
                        "building the tutorial stand-in (random weights, real sizes)")
            section = run_section("stand-in", str(stand_in_model), sub_docs, sub_split,
                                  sub["words"], options, run, workdir, with_spacy=False,
                                  memory_docs=None)
            section.update(title="stand-in of the Flair tutorial tagger (GloVe + news-forward/"
                                 "backward shapes, random weights)",
                           documents=sub["documents"], sentences=sub["sentences"],
                           words=sub["words"], characters=sub["characters"],
                           stand_in={"word_embeddings": f"{built['vocab']:,} x 100",
                                     "flair_embeddings": "forward + backward LanguageModel, LSTM "
                                                         "hidden 2048, 1 layer, char embedding 100, "
                                                         f"{built['chars']} chars",
                                     "tagger": "BiLSTM hidden 256 + CRF",
                                     "parameters": built["parameters"],
                                     "file_mb": round(built["file_mb"], 1)})
            sections.append(section)
        report["sections"] = sections
    finally:
        if options.workdir is None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    per_row = options.isolate
    for section in report["sections"]:
        device = next((r["device"] for r in section["rows"] if r["device"]), "?")
        threads = sorted({r["extra"]["torch_threads"] for r in section["rows"]
                          if "torch_threads" in r["extra"]})
        wait = os.environ.get("OMP_WAIT_POLICY")
        section["summary"] = (f"{section['documents']:,} documents, {section['sentences']:,} "
                              f"sentences, {section['words']:,} words (spaCy tokens), "
                              f"{section['characters']:,} characters; device {device}, torch "
                              f"threads {'/'.join(map(str, threads)) or '?'}"
                              f"{', OMP_WAIT_POLICY=' + wait if wait else ''}; "
                              f"best of {options.repeat} run(s) per row")
        echo("")
        echo(format_section(section, per_row))
    echo("")
    load = report["environment"]["load_average"]
    echo(f"input: {origin}; {report['environment']['cpu_count']} CPUs, load average at start "
         f"{' '.join(f'{x:.1f}' for x in load) if load else '?'}; words/s = the same spaCy "
         "token count / timed seconds; cpu s and peak RSS: the row's process (all its threads), "
         "for (3) plus its sentence-splitter process")
    if options.json_file:
        path = Path(options.json_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(_worker_main(sys.argv))
    sys.exit("usage: annotator bench ... (this module runs workers for it)")

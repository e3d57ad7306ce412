"""The bench's rows, each measured in its own process: load, warm up, time, report JSON.

Run as `python -m annotator.bench.rows --worker SPEC.json` by `annotator.bench.run`.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from annotator import logs
from annotator.bench.docs import write_docs
from annotator.tagging.engines import flair_spans

STAND_IN_CHARS = 275


WARMUP_TEXTS = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday to discuss the budget.",
    "Shares of Siemens AG rose 3 percent in Frankfurt trading, a spokesman said.",
    "The United Nations said on Friday that aid had reached Nairobi.",
]


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


def _gpu_peak_mb(device, reset: bool = False) -> float | None:
    """The peak of GPU memory torch allocated since the last reset, in MB (None off a GPU)."""
    if device is None or device.type != "cuda":
        return None
    import torch

    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


class _Clock:
    """Times a block: wall and process CPU seconds, RSS before it and the peak RSS right after.

    `helpers`: pids of child processes working for the row (annotate's sentence splitter):
    their CPU time and peak RSS are added in.
    """

    def __init__(self, device=None, helpers: tuple[int, ...] = ()) -> None:
        self.device = device
        self.helpers = helpers

    def __enter__(self) -> _Clock:
        self.loaded = rss_mb()
        if self.device is not None:
            _sync(self.device)
        _gpu_peak_mb(self.device, reset=True)
        self.cpu = time.process_time() + sum(map(cpu_seconds, self.helpers))
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device is not None:
            _sync(self.device)
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = time.process_time() + sum(map(cpu_seconds, self.helpers)) - self.cpu
        self.peak = peak_rss_mb() + sum(peak_rss_mb(pid) for pid in self.helpers)
        self.gpu_peak = _gpu_peak_mb(self.device)

    def result(self, **more: Any) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "peak_rss_mb": self.peak,
            "loaded_rss_mb": self.loaded,
            "gpu_peak_mb": self.gpu_peak,
            **more,
        }


def _read_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _load_split(path: str):
    import pickle

    with open(path, "rb") as handle:
        return pickle.load(handle)


def _entities(texts, per_doc, spans) -> list[list]:
    """Token spans of every sentence -> [doc, sentence, start, end, label, score] rows."""
    from annotator.tagging.engines import entities_of

    rows, position = [], 0
    for index, (text, sentences) in enumerate(zip(texts, per_doc)):
        found = spans[position : position + len(sentences)]
        position += len(sentences)
        for e in entities_of(text, sentences, found):
            rows.append([index, e.sentence, e.start, e.end, e.label, float(e.score)])
    return rows


def _warm_tokens() -> list[list[str]]:
    return [re.findall(r"\w+|[^\w\s]", text) for text in WARMUP_TEXTS]


def _row_model_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """The sentence rules the model was trained for (every row splits as `annotate` does with
    it), and whether it carries a calibration map (then its span scores are not Flair's)."""
    from annotator.models import load_tagger
    from annotator.segmentation import segmenter_settings
    from annotator.tagging.calibration import CARD_KEY

    tagger = load_tagger(spec["model"], device="cpu")
    return {
        "segmenter": segmenter_settings(tagger),
        "calibrated": CARD_KEY in (tagger.model_card or {}),
    }


def _row_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Split every document once; the pre-split sentences feed rows 2, 3p and 4."""
    import pickle

    from annotator.segmentation import Segmenter

    texts = _read_texts(spec["docs"])
    per_doc = list(Segmenter(**spec.get("segmenter", {})).split(texts))
    with open(spec["split"], "wb") as handle:
        pickle.dump(per_doc, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "documents": len(texts),
        "sentences": sum(len(d) for d in per_doc),
        "words": sum(len(s) for d in per_doc for s in d),
        "characters": sum(len(t) for t in texts),
    }


def _row_flair_docs(spec: dict[str, Any]) -> dict[str, Any]:
    from flair.data import Sentence as FlairSentence

    from annotator.models import choose_device, load_tagger
    from annotator.segmentation import Segmenter

    device = choose_device(spec["device"])
    tagger = load_tagger(spec["model"], device=str(device))
    segmenter = Segmenter(**spec.get("segmenter", {}))
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
    spans = [
        flair_spans(s, tagger.label_type) for _, flair_sentences in done for s in flair_sentences
    ]
    return clock.result(
        device=_device_name(device),
        engine="flair",
        words=sum(len(s) for d in per_doc for s in d),
        entities=_entities(texts, per_doc, spans),
    )


def _row_tagger(spec: dict[str, Any]) -> dict[str, Any]:
    """Row 2 (engine flair, a batch size), 3p (the fast engine) and 3n (the numpy engine) on
    pre-split sentences."""
    from annotator.models import choose_device, load_tagger
    from annotator.tagging.engines import FlairEngine, make_engine

    device = choose_device(spec["device"])
    unsupported = _precision_unsupported(spec, device)
    if unsupported:
        return {"skipped": unsupported}
    if spec["engine"] == "numpy":
        engine = _numpy_engine(spec, device)
        if isinstance(engine, str):
            return {"skipped": engine}
    elif spec["engine"] == "flair":
        engine = FlairEngine(load_tagger(spec["model"], device=str(device)), spec["batch_size"])
    else:
        tagger = load_tagger(spec["model"], device=str(device))
        engine = make_engine(
            tagger, device=device, engine="auto", precision=spec.get("precision", "fp32")
        )
    texts = _read_texts(spec["docs"])
    per_doc = _load_split(spec["split"])
    flat = [s.tokens for d in per_doc for s in d]
    engine.predict(_warm_tokens())
    with _Clock(device) as clock:
        spans = engine.predict(flat)
    return clock.result(
        device=_device_name(device),
        engine=engine.name,
        words=sum(len(t) for t in flat),
        entities=_entities(texts, per_doc, spans),
        max_tokens_per_batch=getattr(engine, "max_tokens_per_batch", None),
    )


def _numpy_engine(spec: dict[str, Any], device):
    """The numpy engine for row 3n, or why it does not run here."""
    from annotator.errors import ModelError
    from annotator.models import load_model
    from annotator.tagging.engines import make_engine

    if device.type != "cpu" or spec.get("precision", "fp32") != "fp32":
        return "the numpy engine runs on the CPU in float32"
    try:
        return make_engine(load_model(spec["model"], "cpu", engine="numpy"))
    except ModelError as exc:
        return str(exc)


def _row_annotate(spec: dict[str, Any]) -> dict[str, Any]:
    from annotator.models import choose_device
    from annotator.pipeline import AnnotateOptions, Annotator, annotate

    unsupported = _precision_unsupported(spec, choose_device(spec["device"]))
    if unsupported:
        return {"skipped": unsupported}
    precision = spec.get("precision", "fp32")
    annotator = Annotator(spec["model"], device=spec["device"], precision=precision)
    list(annotator.annotate_texts(WARMUP_TEXTS))
    options = AnnotateOptions(
        model=spec["model"], device=spec["device"], progress=False, precision=precision
    )
    output = spec["output"]
    helpers = (annotator.splitter.pid,) if annotator.splitter is not None else ()
    with _Clock(annotator.device, helpers) as clock:
        summary = annotate([spec["docs"]], output, options, annotator=annotator)
    result = clock.result(
        device=_device_name(annotator.device),
        engine=annotator.engine.name,
        words=summary.words,
        documents=summary.documents,
        max_tokens_per_batch=getattr(annotator.engine, "max_tokens_per_batch", None),
    )
    if spec.get("entities", True):
        result["entities"] = _parquet_entities([output])
    os.unlink(output)
    return result


def _parquet_entities(paths) -> list[list]:
    """Spans-layout Parquet rows -> [doc, sentence, start, end, label, score] rows; documents
    written more than once (ids COPY-INDEX, see bench.docs.write_docs) as their first copy only."""
    import pyarrow.parquet as pq

    rows = []
    for path in paths:
        columns = ["doc_id", "sentence", "start_char", "end_char", "label", "score"]
        table = pq.read_table(path, columns=columns)
        for d, s, a, b, label, x in zip(*(table.column(name).to_pylist() for name in columns)):
            copy, _, index = d.rpartition("-")
            if copy in ("", "0"):
                rows.append([int(index), s, a, b, str(label), float(x)])
    return rows


def _row_annotate_workers(spec: dict[str, Any]) -> dict[str, Any]:
    """Row 3w: annotate in worker processes on one device, each splitting sentences in its own
    child process, so that reading and splitting run in parallel beside the tagger."""
    import shutil

    import pyarrow.parquet as pq

    from annotator.models import choose_device
    from annotator.runs.directory import part_files
    from annotator.runs.request import AnnotateOptions, AnnotateRequest
    from annotator.runs.workers import annotate_with_workers

    device = choose_device(spec["device"])
    options = AnnotateOptions(
        model=spec["model"],
        device=spec["device"],
        progress=False,
        precision=spec.get("precision", "fp32"),  # as row 3's
    )
    docs = spec["docs"]
    if spec.get("copies", 1) > 1:  # more work per worker: their staggered starts weigh little
        docs = f"{spec['output']}-docs.jsonl"
        write_docs(Path(docs), _read_texts(spec["docs"]), copies=spec["copies"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    devices = (spec["device"],) * spec["workers"]
    output = f"{str(spec['output']).rstrip('/')}/"  # a directory of parts
    request = AnnotateRequest.build([docs], output, options, devices=devices)
    summary = annotate_with_workers(request)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    parts = part_files(spec["output"])
    metadata = json.loads(pq.read_schema(parts[0]).metadata[b"annotator"]) if parts else {}
    result = {
        "seconds": summary.work_seconds,
        "wall_seconds": wall,
        "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "peak_rss_mb": after.ru_maxrss / 1024,
        "loaded_rss_mb": None,
        "device": _device_name(device),
        "engine": metadata.get("engine", "?"),
        "workers": spec["workers"],
        "words": summary.words,
        "documents": summary.documents,
    }
    if spec.get("entities", True):
        result["entities"] = _parquet_entities(parts)
    shutil.rmtree(spec["output"])
    if docs != spec["docs"]:
        os.unlink(docs)
    return result


def _row_forward(spec: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: the fast engine's forward pass alone (no preparation, decoding or spans), on
    the batches the pipeline would cut."""
    import torch

    from annotator.models import choose_device, load_tagger
    from annotator.tagging.engines import make_engine
    from annotator.tagging.fast import FastSequenceTagger
    from annotator.tagging.packed import eval_mode

    device = choose_device(spec["device"])
    unsupported = _precision_unsupported(spec, device)
    if unsupported:
        return {"skipped": unsupported}
    tagger = load_tagger(spec["model"], device=str(device))
    reason = FastSequenceTagger.unsupported_reason(tagger)
    if reason is not None:
        return {"skipped": f"the fast engine does not support this model ({reason})"}
    fast = make_engine(
        tagger, device=device, engine="fast", precision=spec.get("precision", "fp32")
    )
    per_doc = _load_split(spec["split"])
    flat = [s.tokens for d in per_doc for s in d]
    fast.emissions(_warm_tokens())
    with torch.inference_mode(), eval_mode(tagger), fast._autocast():
        prepared = [fast.prepare(batch) for _, batch, _ in fast.batches(flat)]
        with _Clock(device) as clock:
            for batch in prepared:
                fast.forward_packed(batch)
    return clock.result(
        device=_device_name(device),
        engine="fast (forward only)",
        words=sum(len(t) for t in flat),
        batches=len(prepared),
        max_tokens_per_batch=fast.max_tokens_per_batch,
    )


def _precision_unsupported(spec: dict[str, Any], device) -> str | None:
    """Why the row's --precision cannot run here (bf16 without bfloat16 units), or None."""
    from annotator.errors import UsageError
    from annotator.tagging.precision import resolve_precision

    try:
        resolve_precision(spec.get("precision", "fp32"), device)
    except UsageError as exc:
        return str(exc)
    return None


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
    return clock.result(
        device="cpu",
        engine=f"spaCy {spacy.__version__} {name}: {', '.join(nlp.pipe_names)}",
        own_tokens=tokens,
        entity_count=entities,
    )


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
        lm = LanguageModel(
            chars, is_forward_lm=forward, hidden_size=2048, nlayers=1, embedding_size=100
        )
        path = folder / f"stand-in-news-{'forward' if forward else 'backward'}.pt"
        lm.save(path)
        lms.append(FlairEmbeddings(str(path)))
    tags = Dictionary(add_unk=False)
    tags.add_item("O")
    for label in ("PER", "LOC", "ORG", "MISC"):
        for prefix in "SBEI":
            tags.add_item(f"{prefix}-{label}")
    tagger = SequenceTagger(
        hidden_size=256,
        embeddings=StackedEmbeddings([words, *lms]),
        tag_dictionary=tags,
        tag_type="ner",
        use_crf=True,
    )
    with torch.no_grad():  # favour O: some entities (span work is part of the cost), not all tags
        tagger.linear.bias[tagger.label_dictionary.get_idx_for_item("O")] += spec.get("o_bias", 1.0)
    tagger.save(spec["output"])
    return {
        "parameters": sum(p.numel() for p in tagger.parameters()),
        "vocab": len(vocab),
        "chars": len(chars),
        "file_mb": os.path.getsize(spec["output"]) / 1e6,
    }


ROWS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "model-rules": _row_model_rules,
    "prepare": _row_prepare,
    "flair-docs": _row_flair_docs,
    "tagger": _row_tagger,
    "annotate": _row_annotate,
    "annotate-workers": _row_annotate_workers,
    "forward": _row_forward,
    "spacy": _row_spacy,
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
    untimed = ("model-rules", "prepare", "spacy", "build-stand-in")
    if spec["kind"] not in untimed and "skipped" not in result:
        import torch

        result["threads"] = torch.get_num_threads()
    return result


def _worker_main(argv: list[str]) -> int:
    spec_path = Path(argv[argv.index("--worker") + 1])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    logs.quiet_flair()
    result = run_spec(spec)
    Path(spec["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(_worker_main(sys.argv))
    sys.exit("usage: annotator bench ... (this module runs workers for it)")

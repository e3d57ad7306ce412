"""`annotator bench`: how fast is annotation, side by side with the ways Flair and spaCy are used.

Every row runs on the same documents, in its own fresh Python process (so its peak RSS is its
own: `VmHWM` of that process, which a new process image starts afresh), and is timed after the
model is loaded and warmed up on a few unrelated sentences:

  1  Flair as its tutorial uses it: split each document (the same spaCy splitter), build flair
     Sentences, `tagger.predict(sentences)` per document (split time included)
  2  Flair's `tagger.predict` over all (pre-split) sentences, at mini-batch 32 and each other
     `--batch-sizes` candidate; the fastest is marked best
  3p the fast engine's `predict` alone over the same pre-split sentences (diagnostic)
  3n the numpy engine's `predict` alone, the same way (CPU, float32, models it covers): `auto`
     picks it on a CPU where it covers the model, so (3) runs it there
  3  `annotator annotate` end to end: read JSONL -> split -> tag -> write Parquet, via
     `annotator.pipeline.annotate`
  3w with `--annotate-workers N`: the same in N worker processes on the device, each splitting
     in its own child process (`annotator.runs.workers.annotate_with_workers`), timed from the
     first worker starting on its documents to the last one done; `--workers-copies K` gives it
     the documents K times over, so that the workers' staggered starts weigh little
  4  the model's forward pass alone on prepared, batched input (FastSequenceTagger.forward_packed):
     the ceiling for (3)
  5  spaCy's own NER (`nlp.pipe(texts)` with only the components NER needs), when a pipeline
     is installed or named (--spacy-ner / ANNOTATOR_SPACY_NER)

  first answer: one short document through `annotator annotate` in a fresh process, start
     and model loading included (best of 3 after one untimed run), and a usage error's answer

Words are counted once for all rows: the spaCy tokens (whitespace dropped) of the documents.
Outputs of rows 1, 2, 3p and 3 are compared with (2) at batch 32: identical spans and labels,
scores within 1e-4. `--memory` also runs (3) on the documents repeated 10x and compares peaks.
On a GPU, rows also report the peak of GPU memory torch allocated; `--flair-docs N` runs Flair's
rows (1, 2) on the first N documents only (Flair's predict on a GPU is no faster than on two CPU
cores), and the spans of the other rows are compared on those documents.
`--stand-in tutorial` adds a section for a same-shape stand-in of the Flair tutorial's
GloVe + news-forward/backward tagger (random weights of the real sizes; speed does not depend
on the weights), built in code and never downloaded.

Rows are `annotator.bench.rows` run as `python -m annotator.bench.rows --worker SPEC.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from annotator.bench.docs import generated_documents, write_docs
from annotator.bench.report import (
    GOALS,
    SCORE_TOLERANCE,
    Row,
    best_result,
    compare_entities,
    environment,
    format_section,
    goal_results,
    ordered_rows,
    section_summary,
)
from annotator.bench.rows import run_spec, spacy_ner_target
from annotator.errors import AnnotatorError

MEMORY_FACTOR = GOALS["memory"]["factor"]


STAND_IN_DOCS = 5


STAND_IN_VOCAB = 400_000


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
    # torch intra-op (and numpy's BLAS) threads in every row (default: their own)
    threads: int | None = None
    workdir: str | None = None  # keep intermediate files here (default: a temp dir)
    flair_docs: int | None = None  # Flair's rows (1, 2) on the first N documents only
    annotate_workers: int = 1  # > 1: row 3w, annotate in this many worker processes
    workers_copies: int = 1  # row 3w reads the documents this many times over
    # the fast engine's precisions: rows 3, 3p and 4 run in each (fp32's keys are plain,
    # others' get @PRECISION: 3@bf16)
    precisions: tuple[str, ...] = ("fp32",)


def load_documents(options: BenchOptions) -> tuple[list[str], str]:
    """The texts to benchmark, and where they came from."""
    if options.inputs:
        from annotator.io.readers import ReaderOptions, expand_inputs, read_documents
        from annotator.records import Document

        texts = []
        for record in read_documents(
            expand_inputs(list(options.inputs)), ReaderOptions(text_field=options.text_field)
        ):
            if isinstance(record, Document):
                texts.append(record.text)
                if options.docs is not None and len(texts) >= options.docs:
                    break
        if not texts:
            raise AnnotatorError(f"no documents in {', '.join(options.inputs)}")
        return texts, ", ".join(options.inputs)
    return generated_documents(options.corpus, options.docs)


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
                # torch's threads, and the numpy engine's (OpenBLAS reads its own variable)
                for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                    env[name] = str(spec["threads"])
            with open(log_path, "w", encoding="utf-8") as log_file:
                code = subprocess.call(
                    [sys.executable, "-m", "annotator.bench.rows", "--worker", str(spec_path)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            if code != 0:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise AnnotatorError(f"bench worker for {what} failed (exit {code}):\n{tail}")
            result = json.loads(Path(spec["result"]).read_text(encoding="utf-8"))
        if "seconds" in result:
            self.log(
                f"bench: {what}: {result['seconds']:.2f} s timed "
                f"({time.perf_counter() - started:.0f} s with loading)"
            )
        elif "skipped" in result:
            self.log(f"bench: {what}: skipped ({result['skipped']})")
        return result


def _per_precision(
    base: dict[str, Any],
    precisions: tuple[str, ...],
    rows: list[tuple[str, str, str, dict[str, Any]]],
) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """Each of `rows` (key, label, what is timed, spec) once per precision of the fast engine:
    fp32's with the plain key, the others' as KEY@PRECISION, labelled [PRECISION]."""
    plans = []
    for precision in precisions:
        tag = "" if precision == "fp32" else f"@{precision}"
        for key, label, timed, spec in rows:
            spec = {**base, **spec, "precision": precision}
            if "output" in spec:  # one output file per precision
                path = Path(spec["output"])
                name = path.stem + tag.replace("@", "-") + path.suffix
                spec["output"] = str(path.with_name(name))
            suffix = f" [{precision}]" if tag else ""
            plans.append((f"{key}{tag}", f"{label}{suffix}", timed, "", spec))
    return plans


def run_section(
    name: str,
    model: str,
    docs_path: Path,
    split_path: Path,
    words: int,
    options: BenchOptions,
    run: _Runner,
    workdir: Path,
    with_spacy: bool,
    memory_docs: Path | None,
    flair_input: tuple[Path, Path, int, int] | None = None,
    rules: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All rows for one model on one document set; rows run round-robin `repeat` times.

    `flair_input`: (documents, their split, words, document count) for Flair's rows (1, 2),
    the first documents of the set; the other rows' spans are compared on those documents.
    `rules`: the model's (`model-rules`): its sentence rules, and whether it is calibrated
    (then only spans and labels are compared: its scores are not Flair's).
    """
    rules = rules or {}
    base = {
        "model": model,
        "device": options.device,
        "docs": str(docs_path),
        "split": str(split_path),
        "threads": options.threads,
        "segmenter": rules.get("segmenter", {}),
    }
    flair_docs, flair_split, flair_words, flair_count = flair_input or (
        docs_path,
        split_path,
        words,
        None,
    )
    flair_base = {**base, "docs": str(flair_docs), "split": str(flair_split)}
    plans: list[tuple[str, str, str, str, dict[str, Any]]] = []  # key, label, timed, batch, spec
    sizes = list(dict.fromkeys([32, *options.batch_sizes]))
    plans.append(
        (
            "2@32",
            "(2) Flair predict, all sentences",
            "predict on pre-split sentences",
            "32",
            {**flair_base, "kind": "tagger", "engine": "flair", "batch_size": 32},
        )
    )
    annotate = {"kind": "annotate", "output": str(workdir / f"{name}-out.parquet")}
    plans += _per_precision(
        base,
        options.precisions,
        [
            (
                "3",
                "(3) annotator annotate, end to end",
                "read JSONL > split > tag > Parquet",
                annotate,
            )
        ],
    )
    if options.annotate_workers > 1:
        plans.append(
            (
                "3w",
                f"(3w) annotate, {options.annotate_workers} worker processes",
                "as (3) in workers, each splitting in its own process; cpu s and peak RSS: "
                "all workers, model loading included",
                "",
                {
                    **base,
                    "kind": "annotate-workers",
                    "workers": options.annotate_workers,
                    "copies": options.workers_copies,
                    "output": str(workdir / f"{name}-workers"),
                },
            )
        )
    plans += _per_precision(
        base,
        options.precisions,
        [
            (
                "3p",
                "(3p) fast engine predict only",
                "predict on pre-split sentences",
                {"kind": "tagger", "engine": "auto"},
            ),
            (
                "3n",
                "(3n) numpy engine predict only",
                "predict on pre-split sentences, without torch",
                {"kind": "tagger", "engine": "numpy"},
            ),
            (
                "4",
                "(4) forward pass only (ceiling)",
                "torch forward on prepared batches",
                {"kind": "forward"},
            ),
        ],
    )
    plans.append(
        (
            "1",
            "(1) Flair tutorial, per document",
            "split + predict each document",
            "32",
            {**flair_base, "kind": "flair-docs"},
        )
    )
    for size in sizes[1:]:
        plans.append(
            (
                f"2@{size}",
                "(2) Flair predict, all sentences",
                "predict on pre-split sentences",
                str(size),
                {**flair_base, "kind": "tagger", "engine": "flair", "batch_size": size},
            )
        )
    target = spacy_ner_target(options.spacy_ner) if with_spacy else None
    if with_spacy:
        plans.append(
            (
                "5",
                "(5) spaCy NER, nlp.pipe",
                "nlp.pipe(texts), NER components only",
                "",
                {**base, "kind": "spacy", "spacy_ner": target},
            )
        )
    results: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in plans}
    for attempt in range(max(1, options.repeat)):
        for key, label, _, batch, spec in plans:
            if key == "5" and target is None:
                continue
            suffix = f" (run {attempt + 1}/{options.repeat})" if options.repeat > 1 else ""
            results[key].append(
                run(spec, f"[{name}] {label}{' @' + batch if batch else ''}{suffix}")
            )

    rows: dict[str, Row] = {}
    for key, label, timed, batch, spec in plans:
        row = Row(key=key, label=label, timed=timed, batch=batch)
        rows[key] = row
        if not results[key]:
            row.skipped = (
                "no spaCy NER pipeline (install en_core_web_sm, or give --spacy-ner "
                "NAME|PATH or ANNOTATOR_SPACY_NER)"
            )
            continue
        best = best_result(results[key])
        if "skipped" in best:
            row.skipped = best["skipped"]
            continue
        # Flair's rows may see only the first documents; row 3w its documents `copies` times
        counted = flair_words if spec["docs"] == str(flair_docs) else words
        counted *= spec.get("copies", 1)
        row.seconds = best["seconds"]
        row.runs = best["runs"]
        row.extra["cpu_runs"] = best["cpu_runs"]
        row.cpu_seconds = best["cpu_seconds"]
        row.words_per_cpu_second = counted / row.cpu_seconds if row.cpu_seconds > 0 else None
        row.words = counted
        row.words_per_second = counted / row.seconds if row.seconds > 0 else None
        row.peak_rss_mb = best["peak_rss_mb"]
        row.gpu_peak_mb = best.get("gpu_peak_mb")
        row.loaded_rss_mb = best.get("loaded_rss_mb")
        row.device = best.get("device", "")
        row.engine = best.get("engine", "")
        if "threads" in best:
            row.extra["torch_threads"] = best["threads"]
        if best.get("max_tokens_per_batch") and not batch:
            row.batch = f"{best['max_tokens_per_batch']} tok"
        if "words" in best and best["words"] != counted:
            row.extra["own_words"] = best["words"]
        extras = ("own_tokens", "entity_count", "batches", "documents", "wall_seconds", "workers")
        for extra in extras:
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
        elif row.key.split("@")[0] == "4":
            row.comparison = "no decoding"
        elif row is reference:
            row.comparison = "reference"
        elif mine is not None and ref_entities is not None:
            if flair_count is not None:  # Flair's rows saw only the first documents
                mine = [entity for entity in mine if entity[0] < flair_count]
            tolerance = None if rules.get("calibrated") else SCORE_TOLERANCE
            row.identical, row.comparison = compare_entities(ref_entities, mine, tolerance)
    reference.extra.pop("_entities", None)
    flair_rows = [rows[f"2@{s}"] for s in sizes if rows[f"2@{s}"].words_per_second]
    if flair_rows:
        max(flair_rows, key=lambda r: r.words_per_second).best = True

    memory = None
    if memory_docs is not None:
        spec = {
            **base,
            "kind": "annotate",
            "docs": str(memory_docs),
            "entities": False,
            "output": str(workdir / f"{name}-memory.parquet"),
        }
        big = best_result(
            [run(spec, f"[{name}] (3) annotate on the corpus x{MEMORY_FACTOR} (memory)")]
        )
        one = rows["3"]
        memory = {
            "factor": MEMORY_FACTOR,
            "peak_rss_mb_1x": one.peak_rss_mb,
            "peak_rss_mb_10x": big["peak_rss_mb"],
            "words_10x": big["words"],
            "seconds_10x": big["seconds"],
            "words_per_second_10x": big["words"] / big["seconds"] if big["seconds"] else None,
            "growth_percent": 100.0 * (big["peak_rss_mb"] / one.peak_rss_mb - 1.0)
            if one.peak_rss_mb
            else None,
            "goal_percent": GOALS["memory"]["growth_percent_below"],
        }
        memory["met"] = (
            memory["growth_percent"] is not None
            and memory["growth_percent"] < memory["goal_percent"]
        )
    return {
        "name": name,
        "model": model,
        "rows": [asdict(r) for r in ordered_rows(rows)],
        "goals": goal_results(rows, name),
        "memory": memory,
    }


#: timed runs of the first-answer commands (each after one untimed run)
FIRST_ANSWER_RUNS = 3


#: the first answer's document: one short news sentence
FIRST_ANSWER_TEXT = "Angela Merkel met Emmanuel Macron in Paris on Tuesday."


def _timed_command(args: list[str]) -> tuple[float, int]:
    """The best wall-clock seconds of FIRST_ANSWER_RUNS runs of `python -m annotator ARGS`, a
    fresh process each (one untimed run first: the file cache, and a .pt's export, are warm),
    and the last run's exit code."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "annotator", *args]
    best, code = float("inf"), 0
    for attempt in range(FIRST_ANSWER_RUNS + 1):
        started = time.perf_counter()
        code = subprocess.call(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if attempt:
            best = min(best, time.perf_counter() - started)
    return best, code


def first_answer(model: str, text: str, device: str, workdir: Path) -> dict[str, Any]:
    """What a Unix pipeline user waits for: one short document through `annotator annotate`
    in a fresh process (start, model loading and all), and a usage error's answer."""
    source, output = workdir / "first-answer.jsonl", workdir / "first-answer-out.jsonl"
    write_docs(source, [text])
    seconds, code = _timed_command(
        ["annotate", str(source), "-o", str(output), "--model", model, "--device", device]
    )
    if code != 0:
        raise AnnotatorError(f"bench: the first-answer run of annotate failed (exit {code})")
    usage, code = _timed_command(["annotate", "--no-such-option"])
    goal = GOALS["first_answer"]
    return {
        "seconds": seconds,
        "engine": _first_answer_engine(model, device),
        "characters": len(text),
        "usage_error_seconds": usage,
        "usage_error_exit": code,
        "goal_seconds": goal["seconds_at_most"],
        "goal_usage_error_seconds": goal["usage_error_seconds_at_most"],
        "met": seconds <= goal["seconds_at_most"] and usage <= goal["usage_error_seconds_at_most"],
    }


def _first_answer_engine(model: str, device: str) -> str:
    """The engine `annotate` picks for `model` on `device` (`--engine auto`, float32): numpy
    where `numpy_engine_wanted` and it covers the model, else the torch fast engine (or
    Flair's predict, where that does not cover it either)."""
    from annotator.models import load_model
    from annotator.tagging.engines import make_engine

    return make_engine(load_model(model, device, precision="fp32"), device=None).name


def _resolve_model(model: str | None) -> str | None:
    from annotator.models import DEFAULT_MODEL

    if model:
        return model
    return str(DEFAULT_MODEL) if DEFAULT_MODEL.exists() else None


def _prepared(
    run: Callable,
    workdir: Path,
    suffix: str,
    texts: list[str],
    label: str,
    segmenter: dict[str, Any] | None = None,
) -> tuple[Path, Path, dict[str, Any]]:
    """`texts` written as documents and split once by a worker (with the model's sentence rules,
    `segmenter`): (documents, split, counts)."""
    docs = workdir / f"docs{suffix}.jsonl"
    write_docs(docs, texts)
    split = workdir / f"split{suffix}.pkl"
    spec = {"kind": "prepare", "docs": str(docs), "split": str(split), "segmenter": segmenter}
    return docs, split, run({k: v for k, v in spec.items() if v}, label)


def run_bench(
    options: BenchOptions,
    echo: Callable[[str], None] = print,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; prints the table(s) with `echo`, progress with `log`; returns the report
    (also written to `options.json_file`)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if options.stand_in not in (None, "tutorial"):
        raise AnnotatorError("--stand-in: the only stand-in is 'tutorial'")
    if options.repeat < 1 or (options.docs is not None and options.docs < 1):
        raise AnnotatorError("--repeat and --docs must be at least 1")
    if any(size < 1 for size in options.batch_sizes):
        raise AnnotatorError("--batch-sizes must be positive")
    from annotator.tagging.precision import PRECISIONS

    if not options.precisions or not set(options.precisions) <= set(PRECISIONS):
        raise AnnotatorError(f"--precision: a comma-separated list of {', '.join(PRECISIONS)}")
    flair_docs = 1 if options.flair_docs is None else options.flair_docs
    if min(options.annotate_workers, options.workers_copies, flair_docs) < 1:
        raise AnnotatorError(
            "--annotate-workers, --workers-copies and --flair-docs must be at least 1"
        )
    model = _resolve_model(options.model)
    if model is None and options.stand_in is None:
        raise AnnotatorError(
            "no --model given and no default model is packaged; pass --model "
            "PATH (or --stand-in tutorial to bench only the stand-in)"
        )
    texts, origin = load_documents(options)
    keep = (
        tempfile.mkdtemp(prefix="annotator-bench-") if options.workdir is None else options.workdir
    )
    workdir = Path(keep)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Runner(workdir, options.isolate, log)
    report: dict[str, Any] = {
        "environment": environment(options.device, options.isolate, options.threads),
        "input": origin,
        "options": {k: v for k, v in asdict(options).items() if k not in ("workdir",)},
        "sections": [],
    }
    try:
        rules = (
            run({"kind": "model-rules", "model": model}, "reading the model's sentence rules")
            if model is not None
            else {}
        )
        segmenter = rules.get("segmenter")
        docs_path, split_path, prepared = _prepared(
            run,
            workdir,
            "",
            texts,
            "splitting the documents once (spaCy tokens = the words counted)",
            segmenter,
        )
        sections = []
        if model is not None:
            memory_docs = None
            if options.memory:
                memory_docs = workdir / "docs-x10.jsonl"
                write_docs(memory_docs, texts, copies=MEMORY_FACTOR)
            flair_input = None
            if options.flair_docs is not None and options.flair_docs < len(texts):
                flair_docs_path, flair_split, sub = _prepared(
                    run,
                    workdir,
                    "-flair",
                    texts[: options.flair_docs],
                    f"splitting the first {options.flair_docs} documents for Flair's rows",
                    segmenter,
                )
                flair_input = (flair_docs_path, flair_split, sub["words"], sub["documents"])
            section = run_section(
                "model",
                model,
                docs_path,
                split_path,
                prepared["words"],
                options,
                run,
                workdir,
                with_spacy=True,
                memory_docs=memory_docs,
                flair_input=flair_input,
                rules=rules,
            )
            log("bench: first answer: one short document through annotate, a fresh process")
            section["first_answer"] = first_answer(
                model, FIRST_ANSWER_TEXT, options.device, workdir
            )
            section.update(
                title=f"model {model}",
                documents=prepared["documents"],
                sentences=prepared["sentences"],
                words=prepared["words"],
                characters=prepared["characters"],
                flair_words=flair_input[2] if flair_input else prepared["words"],
            )
            sections.append(section)
        if options.stand_in == "tutorial":
            sub_docs, sub_split, sub = _prepared(
                run,
                workdir,
                "-stand-in",
                texts[: options.stand_in_docs],
                "splitting the stand-in's documents",
            )
            stand_in_model = workdir / "stand-in-tutorial.pt"
            built = run(
                {
                    "kind": "build-stand-in",
                    "split": str(split_path),
                    "output": str(stand_in_model),
                    "vocab": options.stand_in_vocab,
                },
                "building the tutorial stand-in (random weights, real sizes)",
            )
            section = run_section(
                "stand-in",
                str(stand_in_model),
                sub_docs,
                sub_split,
                sub["words"],
                options,
                run,
                workdir,
                with_spacy=False,
                memory_docs=None,
            )
            section.update(
                title="stand-in of the Flair tutorial tagger (GloVe + news-forward/"
                "backward shapes, random weights)",
                documents=sub["documents"],
                sentences=sub["sentences"],
                words=sub["words"],
                characters=sub["characters"],
                stand_in={
                    "word_embeddings": f"{built['vocab']:,} x 100",
                    "flair_embeddings": "forward + backward LanguageModel, LSTM "
                    "hidden 2048, 1 layer, char embedding 100, "
                    f"{built['chars']} chars",
                    "tagger": "BiLSTM hidden 256 + CRF",
                    "parameters": built["parameters"],
                    "file_mb": round(built["file_mb"], 1),
                },
            )
            sections.append(section)
        report["sections"] = sections
    finally:
        if options.workdir is None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    per_row = options.isolate
    for section in report["sections"]:
        section["summary"] = section_summary(section, options.repeat, options.flair_docs)
        echo("")
        echo(format_section(section, per_row))
    echo("")
    load = report["environment"]["load_average"]
    echo(
        f"input: {origin}; {report['environment']['cpu_count']} CPUs, load average at start "
        f"{' '.join(f'{x:.1f}' for x in load) if load else '?'}; words/s = the same spaCy "
        "token count / timed seconds; cpu s and peak RSS: the row's process (all its threads), "
        "for (3) plus its sentence-splitter process"
    )
    if options.json_file:
        path = Path(options.json_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report

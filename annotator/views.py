"""See the results: training curves, an entity viewer for annotate's output, an evaluation report.

Figures are drawn with matplotlib's Agg canvas (no display, no global pyplot state) and written
under a temporary name first, so a run being watched never shows a half-written PNG.

Entities are drawn by spaCy's displaCy (``manual=True``). Its entity renderer escapes the
document text (``&``, ``<``, ``>``, ``"``) itself but inserts labels and titles verbatim, so
the text is handed over raw — escaped exactly once, by displaCy — and labels and titles are
escaped here. Entities whose offsets do not fit their text are never drawn: they are listed.
Pages carry a Content-Security-Policy that forbids scripts, as a second line of defence.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from annotator.errors import AnnotatorError

log = logging.getLogger("annotator")

TRAINING_PNG = "training.png"
METRICS = "metrics.json"
TRAINING_FIGSIZE = (10.0, 8.0)  # inches at DPI: training.png is 1000 x 800 pixels
DPI = 100
SHOW_PROBLEMS = 50  # offset problems listed in a page; the count is always complete

#: Light colours that keep black text readable; types get them in sorted order.
PALETTE = ("#7aecec", "#feca74", "#aa9cfc", "#bfe1d9", "#ff9561", "#e4e7d2", "#c887fb",
           "#9cc9cc", "#ffeb80", "#f0a3a3", "#b3d6f5", "#d1e8a8", "#f5c2e7", "#cfcfcf")


#: The usual types keep their colour on every page; others take the palette's in sorted order.
KNOWN_COLORS = {"PER": "#aa9cfc", "PERSON": "#aa9cfc", "ORG": "#7aecec", "LOC": "#feca74",
                "GPE": "#feca74", "MISC": "#bfe1d9"}


def label_colors(labels: Iterable[str]) -> dict[str, str]:
    """One colour per entity type, stable for a given set of types."""
    colors = {label: KNOWN_COLORS[label] for label in set(labels) if label in KNOWN_COLORS}
    free = [c for c in PALETTE if c not in colors.values()] or list(PALETTE)
    others = sorted(label for label in set(labels) if label not in colors)
    colors.update({label: free[i % len(free)] for i, label in enumerate(others)})
    return dict(sorted(colors.items()))


# --- figures ----------------------------------------------------------------------------

def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    """Write the PNG under a temporary name beside `path`, then rename it into place."""
    path = Path(path)
    if not path.parent.exists():
        raise AnnotatorError(f"{path.parent}: no such directory for {path.name}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _run_folder(run: str | Path) -> Path:
    run = Path(run)
    return run.parent if run.is_file() else run


def read_metrics(run: str | Path) -> dict[str, Any]:
    """The per-epoch log a training run writes beside its model."""
    folder = _run_folder(run)
    path = folder / METRICS
    if not folder.exists():
        raise AnnotatorError(f"{folder}: no such model folder")
    if not path.exists():
        raise AnnotatorError(f"{folder}: no {METRICS} here; plot needs the folder an "
                             "`annotator train` run wrote (it logs every epoch to metrics.json)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotatorError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs"), list):
        raise AnnotatorError(f"{path}: has no 'epochs' list; is this a training log?")
    return metrics


def plot_training(run: str | Path, output: str | Path | None = None) -> Path:
    """training.png: train loss, dev P/R/F1 and learning rate per epoch, best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    folder = _run_folder(run)
    metrics = read_metrics(folder)
    epochs = [e for e in metrics["epochs"] if isinstance(e, dict) and "epoch" in e]
    if not epochs:
        raise AnnotatorError(f"{folder / METRICS}: no epoch has finished yet; nothing to plot")
    output = Path(output) if output is not None else folder / TRAINING_PNG

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(e["epoch"], e[key]) for e in epochs if isinstance(e.get(key), (int, float))]
        return [p[0] for p in points], [float(p[1]) for p in points]

    best = metrics.get("best_epoch") or 0
    best_f1 = metrics.get("best_dev_f1")
    figure = _figure(TRAINING_FIGSIZE)
    loss_ax, f1_ax, lr_ax = figure.subplots(3, 1, sharex=True,
                                            gridspec_kw={"height_ratios": [3, 3, 2]})
    x, y = series("train_loss")
    loss_ax.plot(x, y, marker="o", color="#1f77b4", label="training loss")
    loss_ax.set_ylabel("training loss")
    for key, style in (("dev_precision", ":"), ("dev_recall", "--")):
        x, y = series(key)
        f1_ax.plot(x, y, linestyle=style, color="#999999", label=key.replace("dev_", "dev "))
    x, y = series("dev_f1")
    f1_ax.plot(x, y, marker="o", color="#2ca02c", linewidth=2, label="dev micro-F1")
    f1_ax.set_ylabel("dev score")
    f1_ax.set_ylim(0, 1.02)
    f1_ax.legend(loc="lower right", fontsize=9)
    x, y = series("learning_rate")
    lr_ax.step(x, y, where="mid", marker="o", color="#d62728")
    if y and min(y) > 0:
        lr_ax.set_yscale("log")
        levels = sorted(set(y))
        lr_ax.set_yticks(levels if len(levels) <= 8 else levels[::len(levels) // 8 + 1],
                         labels=None)
        lr_ax.yaxis.set_major_formatter("{x:g}")
        lr_ax.yaxis.set_minor_formatter("")
        lr_ax.set_ylim(min(y) / 1.6, max(y) * 1.6)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("epoch")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if best:
        for ax in (loss_ax, f1_ax, lr_ax):
            ax.axvline(best, color="#2ca02c", linestyle="--", alpha=0.6)
        if isinstance(best_f1, (int, float)):
            f1_ax.plot([best], [best_f1], marker="*", markersize=16, color="#2ca02c")
            last = max(e["epoch"] for e in epochs)
            near_end = best > (last + min(e["epoch"] for e in epochs)) / 2
            f1_ax.annotate(f"best {100 * best_f1:.2f} (epoch {best})", (best, best_f1),
                           textcoords="offset points",
                           xytext=(-12 if near_end else 12, -22 if best_f1 > 0.85 else 12),
                           ha="right" if near_end else "left", fontsize=10)
    for ax in (loss_ax, f1_ax, lr_ax):
        ax.grid(alpha=0.3)
    state = {True: "finished", False: "stopped"}.get(metrics.get("finished"), "running")
    figure.suptitle(f"{folder.name} \u2014 {len(epochs)} epochs ({state})"
                    + (f", best dev F1 {100 * best_f1:.2f} at epoch {best}"
                       if best and isinstance(best_f1, (int, float)) else ""))
    figure.tight_layout()
    return _save(figure, output)


# --- pages ------------------------------------------------------------------------------

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:"
_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0;
       padding: 1.5rem 2rem; color: #222; }
header { border-bottom: 1px solid #ddd; padding-bottom: .8rem; margin-bottom: 1.2rem; }
header h1 { font-size: 1.35rem; margin: 0 0 .4rem 0; }
header p { margin: .25rem 0; }
.meta { color: #555; font-size: .9rem; }
.types span.swatch { display: inline-block; padding: .1rem .5rem; margin-right: .4rem;
                     border-radius: .3rem; font-weight: bold; font-size: .85rem; }
.warn { color: #a40000; }
details { margin: .3rem 0; font-size: .85rem; }
article { margin: 0 0 1.6rem 0; }
article .doc { font-size: .8rem; color: #666; margin-bottom: .2rem; }
article h2 { font-size: 1rem !important; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1.2rem; margin-bottom: 1rem;
        border-bottom: 1px solid #eee; padding-bottom: .6rem; }
.pair h3 { font-size: .8rem; color: #666; margin: 0; text-transform: uppercase; }
.note { font-size: .85rem; color: #444; margin: .2rem 0 .6rem 0; }
section > h2 { border-bottom: 2px solid #ddd; font-size: 1.15rem; }
"""


def _page(title: str, header: str, body: str) -> str:
    """Our own shell: charset, a no-script policy, styles; `header` and `body` are markup."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<header>{header}</header>\n{body}\n</body>\n</html>\n")


def _displacy(text: str, spans: list[dict[str, Any]], colors: dict[str, str],
              title: str | None = None, template: str | None = None) -> str:
    """One text with its spans, drawn by displaCy. The text goes in raw: displaCy escapes it."""
    from spacy import displacy

    options: dict[str, Any] = {"colors": {html.escape(k): v for k, v in colors.items()}}
    if template:
        options["template"] = template
    doc = {"text": text, "title": html.escape(title) if title else None,
           "ents": [{"start": s["start"], "end": s["end"], "label": html.escape(str(s["label"])),
                     **({"params": s["params"]} if "params" in s else {})} for s in spans]}
    return displacy.render([doc], style="ent", manual=True, page=False, jupyter=False,
                           options=options)


def _type_legend(counts: Counter, colors: dict[str, str], totals: Counter | None = None) -> str:
    items = []
    for label in sorted(set(counts) | set(totals or ())):
        extra = f" of {totals[label]}" if totals is not None and totals[label] != counts[label] else ""
        items.append(f'<span class="swatch" style="background: {colors.get(label, "#ddd")}">'
                     f"{html.escape(label)}</span>{counts[label]}{extra}&nbsp;&nbsp;")
    return f'<p class="types">{"".join(items) or "no entities"}</p>'


def _problem_list(problems: list[str], what: str) -> str:
    if not problems:
        return ""
    shown = "".join(f"<li>{html.escape(p)}</li>" for p in problems[:SHOW_PROBLEMS])
    more = f"<li>… and {len(problems) - SHOW_PROBLEMS} more</li>" if len(problems) > SHOW_PROBLEMS else ""
    return (f'<details class="warn" open><summary>{len(problems)} {what}</summary>'
            f"<ul>{shown}{more}</ul></details>")


# --- the entity viewer --------------------------------------------------------------------

@dataclass
class ViewDoc:
    """A document to draw: its text and its entities (dicts with start, end, label, text)."""

    id: str
    text: str
    entities: list[dict[str, Any]]
    source: str = ""
    row: int | None = None


@dataclass
class View:
    """A rendered viewer page and what it found on the way."""

    html: str
    shown: int  # documents drawn
    eligible: int  # documents that could be shown (all, or those with a --label entity)
    documents: int  # documents read
    counts: Counter = field(default_factory=Counter)  # entities drawn, per type
    problems: list[str] = field(default_factory=list)  # entities not drawn, and why
    missing: list[str] = field(default_factory=list)  # spans-file documents absent from --docs
    unreadable: int = 0  # --docs records that could not be read

    def warnings(self) -> list[str]:
        lines = list(self.problems)
        if self.missing:
            lines.append(_missing_message(self.missing))
        if self.unreadable:
            lines.append(f"{self.unreadable} records of --docs could not be read and were skipped")
        return lines


def _missing_message(missing: list[str]) -> str:
    sample = ", ".join(repr(m) for m in missing[:5]) + (", …" if len(missing) > 5 else "")
    return (f"{len(missing)} document(s) with entities in the annotate output are not in --docs "
            f"({sample}); their entities are not shown. Give the same inputs annotate read, "
            "with the same --id-field")


def check_entities(doc_id: str, text: str, entities: list[dict[str, Any]]
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """The entities that can be drawn, and one line for each that cannot (and why)."""
    good: list[dict[str, Any]] = []
    problems: list[str] = []
    ordered = sorted(entities, key=lambda e: (_int(e.get("start")), _int(e.get("end"))))
    end_of_last = -1
    for entity in ordered:
        start, end, label = entity.get("start"), entity.get("end"), entity.get("label")
        said = entity.get("text")
        where = f"{doc_id}: {label} entity [{start}:{end}]" + (f" {said!r}" if said is not None else "")
        if not (_is_int(start) and _is_int(end)) or not 0 <= start < end <= len(text):
            problems.append(f"{where}: offsets outside the text ({len(text)} characters)")
        elif said is not None and text[start:end] != said:
            problems.append(f"{where}: the text there is {text[start:end]!r}")
        elif start < end_of_last:
            problems.append(f"{where}: overlaps the entity before it")
        else:
            good.append(entity)
            end_of_last = end
    return good, problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if _is_int(value) else -1


def render_view(docs: list[ViewDoc], *, eligible: int | None = None, documents: int | None = None,
                model: dict[str, Any] | None = None, source: str = "", labels: tuple[str, ...] = (),
                totals: Counter | None = None, missing: list[str] | None = None,
                unreadable: int = 0, all_labels: Iterable[str] = ()) -> View:
    """The viewer page for `docs`; entities whose offsets don't fit their text are listed, not drawn."""
    problems: list[str] = []
    counts: Counter = Counter()
    drawn: list[tuple[ViewDoc, list[dict[str, Any]]]] = []
    for doc in docs:
        good, bad = check_entities(doc.id, doc.text, doc.entities)
        problems.extend(bad)
        counts.update(str(e["label"]) for e in good)
        drawn.append((doc, good))
    colors = label_colors([*counts, *(totals or ()), *all_labels])
    eligible = len(docs) if eligible is None else eligible
    documents = eligible if documents is None else documents
    missing = missing or []

    model_line = "model: unknown (this output carries no provenance metadata)"
    if model and model.get("model"):
        sha = model.get("model_sha256")
        model_line = f"model: {model['model']}" + (f" (sha256 {sha[:12]}…)" if sha else "")
    of_what = (f"documents with {', '.join(labels)} entities" if labels else "documents")
    header = [f"<h1>Entities{': ' + html.escape(source) if source else ''}</h1>",
              f'<p class="meta">{html.escape(model_line)}</p>',
              f"<p>Showing <b>{len(drawn)}</b> of <b>{eligible}</b> {html.escape(of_what)}"
              + (f" ({documents} documents in all)" if documents != eligible else "")
              + f"; {sum(counts.values())} entities drawn.</p>",
              _type_legend(counts, colors, totals)]
    if problems:
        header.append(f'<p class="warn"><b>{len(problems)} entities not drawn</b>: their offsets '
                      "do not match the document text.</p>")
        header.append(_problem_list(problems, "entities not drawn"))
    if missing:
        header.append(f'<p class="warn">{html.escape(_missing_message(missing))}.</p>')
    if unreadable:
        header.append(f'<p class="warn">{unreadable} records of the documents could not be read '
                      "and were skipped.</p>")
    articles = []
    for doc, good in drawn:
        where = f"{doc.source}:{doc.row}" if doc.source and doc.row is not None else doc.source
        entity_count = f"{len(good)} entities" if len(good) != 1 else "1 entity"
        articles.append(f'<article><div class="doc">{html.escape(where)} · {len(doc.text):,} '
                        f"characters · {entity_count}</div>"
                        + _displacy(doc.text, good, colors, title=doc.id) + "</article>")
    page = _page(f"Entities {source}".strip(), "\n".join(header), "\n".join(articles))
    return View(html=page, shown=len(drawn), eligible=eligible, documents=documents, counts=counts,
                problems=problems, missing=missing, unreadable=unreadable)


# Reading annotate's output --------------------------------------------------------------

@dataclass
class _Output:
    layout: str  # "spans" or "documents"
    metadata: dict[str, Any] | None
    records: Iterator[tuple[str, str | None, list[dict[str, Any]]]]  # (id, text, entities)


_ENTITY_KEYS = ("start", "end", "text", "label", "score", "sentence")


def _open_output(path: str, text_field: str) -> _Output:
    """annotate's output, either layout, Parquet or JSONL, as (id, text or None, entities)."""
    from annotator.readers import detect_format

    if not os.path.isfile(path):
        raise AnnotatorError(f"{path}: no such file")
    fmt, compression = detect_format(path, None)
    if fmt == "parquet":
        return _open_parquet(path)
    return _open_jsonl(path, compression, text_field)


def _open_parquet(path: str) -> _Output:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several kinds for one bad file
        raise AnnotatorError(f"{path}: not a readable Parquet file ({exc})") from None
    names = set(parquet.schema_arrow.names)
    raw = (parquet.schema_arrow.metadata or {}).get(b"annotator")
    metadata = None
    if raw:
        try:
            metadata = json.loads(raw)
        except ValueError:
            metadata = None
    if {"doc_id", "entities"} <= names:
        columns = ["doc_id", "entities"] + (["text"] if "text" in names else [])

        def documents():
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                for row in batch.to_pylist():
                    yield str(row["doc_id"]), row.get("text"), list(row["entities"] or [])
        return _Output("documents", metadata, documents())
    if {"doc_id", "start", "end", "label"} <= names:
        columns = ["doc_id", *(k for k in _ENTITY_KEYS if k in names)]

        def spans():
            for batch in parquet.iter_batches(batch_size=8192, columns=columns):
                for row in batch.to_pylist():
                    yield str(row.pop("doc_id")), None, [row]
        return _Output("spans", metadata, spans())
    raise AnnotatorError(f"{path}: not an `annotator annotate` output (columns: "
                         f"{', '.join(sorted(names))})")


def _open_jsonl(path: str, compression: str | None, text_field: str) -> _Output:
    from annotator.readers import _open_binary

    def lines() -> Iterator[tuple[int, dict[str, Any]]]:
        with _open_binary(path, compression) as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise AnnotatorError(f"{path}:{number}: not valid JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise AnnotatorError(f"{path}:{number}: not a JSON object")
                yield number, record

    stream = lines()
    first = next(stream, None)
    if first is None:
        return _Output("spans", None, iter(()))
    layout = "documents" if "entities" in first[1] else \
        "spans" if {"doc_id", "start", "end", "label"} <= set(first[1]) else None
    if layout is None:
        raise AnnotatorError(f"{path}:{first[0]}: not an `annotator annotate` output record "
                             "(no 'entities', and no doc_id/start/end/label)")

    def records():
        for number, record in _chain(first, stream):
            if layout == "documents":
                entities = record.get("entities")
                if "id" not in record or not isinstance(entities, list):
                    raise AnnotatorError(f"{path}:{number}: a documents-layout record needs "
                                         "'id' and an 'entities' list")
                text = record.get(text_field)
                yield str(record["id"]), text if isinstance(text, str) else None, \
                    [e for e in entities if isinstance(e, dict)]
            else:
                if "doc_id" not in record:
                    raise AnnotatorError(f"{path}:{number}: a spans-layout record needs 'doc_id'")
                yield str(record["doc_id"]), None, [{k: record.get(k) for k in _ENTITY_KEYS}]
    return _Output(layout, None, records())


def _chain(first, rest):
    yield first
    yield from rest


def _filter(entities: list[dict[str, Any]], labels: tuple[str, ...]) -> list[dict[str, Any]]:
    return [e for e in entities if not labels or e.get("label") in labels]


def build_view(spans_file: str, docs: list[str] | tuple[str, ...] = (), *, text_field: str = "text",
               id_field: str = "id", input_format: str | None = None, limit: int = 100,
               labels: tuple[str, ...] = ()) -> View:
    """The viewer page for an `annotate` output, with the text from `docs` (or from the output).

    Without `docs`, the output must be in the documents layout and hold the text. With `labels`,
    only entities of those types are drawn and only documents that have one are shown.
    """
    from annotator.readers import ReaderOptions, RecordError, expand_inputs, read_documents

    if limit < 1:
        raise AnnotatorError("--limit must be at least 1")
    output = _open_output(spans_file, text_field)
    totals: Counter = Counter()
    shown: list[ViewDoc] = []
    eligible = documents = unreadable = 0
    missing: list[str] = []

    if not docs:
        if output.layout == "spans":
            raise AnnotatorError(f"{spans_file}: a spans-layout output holds no document text; give "
                                 "the documents annotate read with --docs FILE")
        for doc_id, text, entities in output.records:
            if text is None:
                raise AnnotatorError(f"{spans_file}: record {doc_id!r} has no {text_field!r} field "
                                     "(written with --drop-fields, or another --text-field?); "
                                     "give the documents annotate read with --docs FILE")
            documents += 1
            entities = _filter(entities, labels)
            totals.update(str(e.get("label")) for e in entities)
            if labels and not entities:
                continue
            eligible += 1
            if len(shown) < limit:
                shown.append(ViewDoc(doc_id, text, entities))
    else:
        by_id: dict[str, list[dict[str, Any]]] = {}
        for doc_id, _, entities in output.records:
            by_id.setdefault(doc_id, []).extend(_filter(entities, labels))
        for entities in by_id.values():
            totals.update(str(e.get("label")) for e in entities)
        seen: set[str] = set()
        options = ReaderOptions(input_format, text_field, id_field)
        for record in read_documents(expand_inputs(list(docs)), options):
            if isinstance(record, RecordError):
                unreadable += 1
                log.warning("--docs: skipped %s", record)
                continue
            documents += 1
            seen.add(record.id)
            entities = by_id.get(record.id, [])
            if labels and not entities:
                continue
            eligible += 1
            if len(shown) < limit:
                shown.append(ViewDoc(record.id, record.text, entities, record.source, record.row))
        missing = [doc_id for doc_id, entities in by_id.items() if doc_id not in seen and entities]
        if missing and not seen & set(by_id):
            raise AnnotatorError(f"none of the {len(by_id)} documents in {spans_file} is in --docs "
                                 f"(ids there look like {', '.join(repr(m) for m in list(by_id)[:3])}; "
                                 f"in --docs: {', '.join(repr(s) for s in list(seen)[:3]) or 'none'}). "
                                 "Give the inputs annotate read, with the same --id-field")
    return render_view(shown, eligible=eligible, documents=documents, model=output.metadata,
                       source=Path(spans_file).name, labels=labels, totals=totals,
                       missing=missing, unreadable=unreadable)


def write_page(page: str, path: str | Path) -> Path:
    path = Path(path)
    if not path.parent.exists():
        raise AnnotatorError(f"{path.parent}: no such directory for {path.name}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- the evaluation report ------------------------------------------------------------------

MISSED = "missed"  # gold span with no prediction at exactly its tokens
SPURIOUS = "spurious"  # predicted span with no gold span at exactly its tokens
ERROR_KINDS = ("wrong type", "wrong boundary", "missed", "spurious")
SHOW_SENTENCES = 200  # per error kind in errors.html

TokenSpan = tuple[int, int, str]  # first token, end token (exclusive), label


@dataclass
class SentenceMatch:
    index: int
    tokens: list[str]
    gold: list[TokenSpan]
    predicted: list[TokenSpan]
    errors: list[tuple[str, TokenSpan | None, TokenSpan | None]]  # kind, gold span, predicted span


def _spans(sentence, label_type: str) -> list[TokenSpan]:
    return sorted((span.tokens[0].idx - 1, span.tokens[-1].idx, span.get_label(label_type).value)
                  for span in sentence.get_spans(label_type))


def match_sentence(index: int, tokens: list[str], gold: list[TokenSpan],
                   predicted: list[TokenSpan]) -> SentenceMatch:
    """Sort each gold and predicted span of one sentence into correct or an error kind.

    Wrong type: a prediction at exactly the gold span's tokens, of another type. Wrong boundary:
    no exact prediction, but one that overlaps. Missed: nothing overlaps the gold span.
    Spurious: a prediction that overlaps no gold span.
    """
    errors: list[tuple[str, TokenSpan | None, TokenSpan | None]] = []
    exact = {(p[0], p[1]): p for p in predicted}
    for g in gold:
        p = exact.get((g[0], g[1]))
        if p is not None:
            if p[2] != g[2]:
                errors.append(("wrong type", g, p))
            continue
        overlapping = [p for p in predicted if p[0] < g[1] and g[0] < p[1]]
        if overlapping:
            errors.append(("wrong boundary", g, overlapping[0]))
        else:
            errors.append(("missed", g, None))
    for p in predicted:
        if not any(g[0] < p[1] and p[0] < g[1] for g in gold):
            errors.append(("spurious", None, p))
    return SentenceMatch(index, tokens, gold, predicted, errors)


def confusion_counts(matches: Iterable[SentenceMatch]) -> dict[str, Counter]:
    """gold type → predicted type → count, at exact span level, as Flair's evaluation pairs them.

    A gold span without a prediction at exactly its tokens counts under MISSED; a prediction
    without a gold span at exactly its tokens under the gold row SPURIOUS. A boundary error is
    therefore one missed and one spurious span, just as Flair scores it.
    """
    table: dict[str, Counter] = {}
    for match in matches:
        gold = {(g[0], g[1]): g[2] for g in match.gold}
        predicted = {(p[0], p[1]): p[2] for p in match.predicted}
        for key, label in gold.items():
            table.setdefault(label, Counter())[predicted.get(key, MISSED)] += 1
        for key, label in predicted.items():
            if key not in gold:
                table.setdefault(SPURIOUS, Counter())[label] += 1
    return table


def _sentence_text(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    offsets, position = [], 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + 1
    return " ".join(tokens), offsets


def plot_scores(result, path: Path) -> Path:
    """P/R/F1 per type (and micro average) as grouped bars, support under each type."""
    import numpy as np

    rows = [*result.per_type.items(), ("micro avg", result.micro)]
    figure = _figure((max(7.0, 1.3 * len(rows) + 3), 5.5))
    ax = figure.subplots()
    x = np.arange(len(rows))
    width = 0.26
    for offset, (name, color) in enumerate((("precision", "#4c72b0"), ("recall", "#dd8452"),
                                            ("f1", "#55a868"))):
        values = [getattr(s, name) for _, s in rows]
        bars = ax.bar(x + (offset - 1) * width, values, width, label=name, color=color)
        for bar, value in zip(bars, values):
            ax.annotate(f"{100 * value:.1f}", (bar.get_x() + bar.get_width() / 2, value),
                        textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
    ax.set_xticks(x, [f"{label}\n(support {s.support})" for label, s in rows])
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("score")
    ax.legend(loc="upper center", ncols=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Span-level scores per type (micro-F1 {100 * result.micro.f1:.2f}, "
                 f"macro-F1 {100 * result.macro.f1:.2f})")
    figure.tight_layout()
    return _save(figure, path)


def plot_confusion(rows: list[str], columns: list[str], counts: list[list[int | None]],
                   path: Path) -> Path:
    """Gold type (rows) against predicted type (columns), counts in the cells."""
    import matplotlib
    import numpy as np

    data = np.array([[c if c is not None else 0 for c in row] for row in counts], dtype=float)
    size = max(6.0, 0.75 * len(columns) + 3)
    figure = _figure((size + 1, size * 0.85))
    ax = figure.subplots()
    shown = np.ma.masked_where(np.array([[c is None for c in row] for row in counts]), np.log1p(data))
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#eeeeee")
    ax.imshow(shown, cmap=cmap, aspect="auto")
    ceiling = np.log1p(data.max()) if data.size else 1
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            if value is None:
                continue
            dark = np.log1p(value) > 0.6 * ceiling
            ax.text(j, i, str(value), ha="center", va="center", fontsize=11,
                    color="white" if dark else "#222", fontweight="bold" if i == j else None)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted type")
    ax.set_ylabel("gold type")
    ax.set_title("Span-level confusion (exact token spans)")
    figure.text(0.01, 0.01, f"'{MISSED}': gold span with no prediction at exactly its tokens; "
                f"'{SPURIOUS}': prediction with no gold span there.\nA boundary error counts "
                "once in each.", fontsize=8, color="#555")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(figure, path)


def _error_template() -> str:
    from spacy.displacy.templates import TPL_ENT

    # displaCy merges each span's "params" into its template: an outline marks the wrong ones
    return TPL_ENT.replace('style="background: {bg};', 'style="background: {bg}; outline: {outline};')


def _describe(kind: str, gold: TokenSpan | None, predicted: TokenSpan | None,
              tokens: list[str]) -> str:
    def words(span: TokenSpan) -> str:
        return "“" + " ".join(tokens[span[0]:span[1]]) + "”"

    if kind == "wrong type":
        return f"{words(gold)}: {gold[2]} predicted as {predicted[2]}"
    if kind == "wrong boundary":
        return f"{words(gold)} {gold[2]}: predicted {words(predicted)} {predicted[2]}"
    if kind == "missed":
        return f"{words(gold)} {gold[2]}: not found"
    return f"{words(predicted)} {predicted[2]}: no such entity"


def render_errors(matches: list[SentenceMatch], colors: dict[str, str], title: str,
                  summary: str) -> str:
    """errors.html: each wrong sentence, gold and predicted side by side, grouped by error kind."""
    template = _error_template()
    by_kind: dict[str, list[SentenceMatch]] = {kind: [] for kind in ERROR_KINDS}
    counts: Counter = Counter()
    for match in matches:
        kinds = [kind for kind, _, _ in match.errors]
        counts.update(kinds)
        for kind in dict.fromkeys(kinds):
            by_kind[kind].append(match)
    links = " · ".join(f'<a href="#{kind.replace(" ", "-")}">{kind}: {counts[kind]}</a>'
                       for kind in ERROR_KINDS)
    header = (f"<h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(summary)}</p>"
              f"<p>Errors: {links}. Outlined: the spans that are wrong. "
              'Figures: <a href="scores.png">scores.png</a>, '
              '<a href="confusion.png">confusion.png</a>.</p>'
              + '<p class="types">' + "".join(
                  f'<span class="swatch" style="background: {color}">{html.escape(label)}</span>'
                  for label, color in colors.items()) + "</p>")
    sections = []
    for kind in ERROR_KINDS:
        items = by_kind[kind]
        parts = [f'<section id="{kind.replace(" ", "-")}"><h2>{kind.capitalize()} '
                 f"({counts[kind]} in {len(items)} sentences)</h2>"]
        if not items:
            parts.append("<p>None.</p>")
        for match in items[:SHOW_SENTENCES]:
            text, offsets = _sentence_text(match.tokens)
            wrong_gold = {e[1] for e in match.errors if e[1] is not None}
            wrong_pred = {e[2] for e in match.errors if e[2] is not None}

            def spans(items: list[TokenSpan], wrong: set) -> list[dict[str, Any]]:
                return [{"start": offsets[s[0]][0], "end": offsets[s[1] - 1][1], "label": s[2],
                         "params": {"outline": "3px solid #d00000" if s in wrong else "none"}}
                        for s in items]

            notes = "; ".join(_describe(k, g, p, match.tokens) for k, g, p in match.errors if k == kind)
            parts.append(
                f'<div class="note">sentence {match.index + 1}: {html.escape(notes)}</div>'
                '<div class="pair"><div><h3>gold</h3>'
                + _displacy(text, spans(match.gold, wrong_gold), colors, template=template)
                + "</div><div><h3>predicted</h3>"
                + _displacy(text, spans(match.predicted, wrong_pred), colors, template=template)
                + "</div></div>")
        if len(items) > SHOW_SENTENCES:
            parts.append(f"<p>… and {len(items) - SHOW_SENTENCES} more sentences.</p>")
        parts.append("</section>")
        sections.append("".join(parts))
    return _page(title, header, "\n".join(sections))


def evaluation_report(model: str | Path | None, corpus_dir: str | Path, report_dir: str | Path,
                      split: str = "test", column_format: str | None = None, batch_size: int = 64,
                      device: str = "auto"):
    """Evaluate like `annotator evaluate`, and write scores.png, confusion.png, errors.html and
    report.json into `report_dir`. Returns the evaluation's own result (Flair's numbers)."""
    from annotator.corpus import DEFAULT_COLUMN_FORMAT, load_corpus, split_sentences
    from annotator.evaluation import evaluate_tagger
    from annotator.models import load_tagger, model_info

    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise AnnotatorError(f"{report_dir}: exists and is not a directory")
    corpus = load_corpus(corpus_dir, column_format or DEFAULT_COLUMN_FORMAT)
    dataset = split_sentences(corpus, split)
    if dataset is None:
        raise AnnotatorError(f"{corpus_dir}: has no {split} split")
    sentences = [dataset[i] for i in range(len(dataset))]
    tagger = load_tagger(model, device=device)
    info = model_info(model)
    # Flair's evaluate leaves its predictions on the sentences under the label type "predicted"
    result = evaluate_tagger(tagger, sentences, batch_size)
    matches = [match_sentence(i, [t.text for t in s], _spans(s, tagger.label_type),
                              _spans(s, "predicted")) for i, s in enumerate(sentences)]
    table = confusion_counts(matches)
    labels = sorted({label for label in table if label != SPURIOUS}
                    | {label for row in table.values() for label in row if label != MISSED})
    rows, columns = [*labels, SPURIOUS], [*labels, MISSED]
    counts = [[None if (r == SPURIOUS and c == MISSED) else table.get(r, Counter())[c]
               for c in columns] for r in rows]
    kinds = Counter(kind for match in matches for kind, _, _ in match.errors)
    report_dir.mkdir(parents=True, exist_ok=True)
    colors = label_colors(labels)
    plot_scores(result, report_dir / "scores.png")
    plot_confusion(rows, columns, counts, report_dir / "confusion.png")
    summary = (f"model {info.name} · {split} split of {corpus_dir} · {len(sentences)} sentences · "
               f"micro P {100 * result.micro.precision:.2f} R {100 * result.micro.recall:.2f} "
               f"F1 {100 * result.micro.f1:.2f}")
    wrong = [m for m in matches if m.errors]
    write_page(render_errors(wrong, colors, f"Errors: {info.name} on the {split} split", summary),
               report_dir / "errors.html")
    report = {
        "model": info.name, "model_sha256": info.sha256, "corpus": str(corpus_dir), "split": split,
        "sentences": len(sentences), "sentences_with_errors": len(wrong),
        "labels": labels,
        "confusion": {"rows": rows, "columns": columns, "counts": counts,
                      "note": f"rows: gold type ('{SPURIOUS}': no gold span at those tokens); "
                              f"columns: predicted type ('{MISSED}': no prediction at those tokens)"},
        "true_positives": {label: table.get(label, Counter())[label] for label in labels},
        "gold": {label: sum(table.get(label, Counter()).values()) for label in labels},
        "predicted": {label: sum(table.get(r, Counter())[label] for r in rows) for label in labels},
        "errors": {kind: kinds[kind] for kind in ERROR_KINDS},
        "scores": result.to_dict(),
    }
    write_page(json.dumps(report, indent=2) + "\n", report_dir / "report.json")
    return result


# --- annotate --html ---------------------------------------------------------------------

def annotate_with_page(inputs, output: str | None, options, run, page: str | Path,
                       limit: int = 100):
    """`annotate ... --html PAGE`: the run as usual, plus a viewer page of its first documents.

    The page needs each document as the run tags it, so it is for runs in this process: one
    output file, stdout or a directory, without --shard on a file, --workers, --devices or Ray.
    """
    from annotator.models import model_info
    from annotator.pipeline import annotate
    from annotator.runs import Shard, annotate_directory, is_directory_output

    if limit < 1:
        raise AnnotatorError("--html-limit must be at least 1")
    if run.engine != "local" or run.devices or (run.workers or 1) > 1:
        raise AnnotatorError("--html needs a run in this process (no --workers, --devices or "
                             "--engine ray); view such a run's output with `annotator view`")
    if not Path(page).resolve().parent.is_dir():
        raise AnnotatorError(f"{Path(page).parent}: no such directory for the --html page")
    sample: list[ViewDoc] = []

    def keep(doc, entities) -> None:
        if len(sample) < limit:
            sample.append(ViewDoc(doc.id, doc.text, [e.to_dict() for e in entities], doc.source,
                                  doc.row))

    if is_directory_output(output):
        summary = annotate_directory(inputs, output, options, Shard.parse(run.shard), run.resume,
                                     run.part_size, on_document=keep)
    else:
        if run.shard or run.resume:
            raise AnnotatorError("--html with --shard or --resume needs a directory output (-o DIR/)")
        summary = annotate(list(inputs), output, options, on_document=keep)
    info = model_info(options.model)
    view = render_view(sample, eligible=summary.documents, model={"model": info.name,
                       "model_sha256": info.sha256}, source=str(output or "stdout"),
                       totals=Counter(summary.entities))
    write_page(view.html, page)
    for line in view.warnings():
        log.warning("%s", line)
    return summary

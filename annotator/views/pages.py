"""HTML pages: the entity viewer and the evaluation's error page.

Entities are drawn by spaCy's displaCy (``manual=True``). Its entity renderer escapes the
document text (``&``, ``<``, ``>``, ``"``) itself but inserts labels and titles verbatim, so
the text is handed over raw — escaped exactly once, by displaCy — and labels and titles are
escaped here. Entities whose offsets do not fit their text are never drawn: they are listed.
Pages carry a Content-Security-Policy that forbids scripts, forms and <base>, as a second line
of defence; the viewer draws only validated values (int offsets within the text, a label string).
"""

from __future__ import annotations

import html
import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotator.errors import AnnotatorError
from annotator.io.outputs import open_output
from annotator.logs import printable
from annotator.records import ERROR_KINDS, LabelledSpan, SentenceMatch, sentence_text

log = logging.getLogger("annotator")


SHOW_PROBLEMS = 50  # offset problems listed in a page; the count is always complete


#: Light colours that keep black text readable; types get them in sorted order.
PALETTE = (
    "#7aecec",
    "#feca74",
    "#aa9cfc",
    "#bfe1d9",
    "#ff9561",
    "#e4e7d2",
    "#c887fb",
    "#9cc9cc",
    "#ffeb80",
    "#f0a3a3",
    "#b3d6f5",
    "#d1e8a8",
    "#f5c2e7",
    "#cfcfcf",
)


#: The usual types keep their colour on every page; others take the palette's in sorted order.
KNOWN_COLORS = {
    "PER": "#aa9cfc",
    "PERSON": "#aa9cfc",
    "ORG": "#7aecec",
    "LOC": "#feca74",
    "GPE": "#feca74",
    "MISC": "#bfe1d9",
}


def label_colors(labels: Iterable[str]) -> dict[str, str]:
    """One colour per entity type, stable for a given set of types."""
    colors = {label: KNOWN_COLORS[label] for label in set(labels) if label in KNOWN_COLORS}
    free = [c for c in PALETTE if c not in colors.values()] or list(PALETTE)
    others = sorted(label for label in set(labels) if label not in colors)
    colors.update({label: free[i % len(free)] for i, label in enumerate(others)})
    return dict(sorted(colors.items()))


#: No scripts, no forms, no <base>: nothing on a page can run, submit or re-point a link.
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'none'; base-uri 'none'"
)


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
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<header>{header}</header>\n{body}\n</body>\n</html>\n"
    )


def _displacy(
    text: str,
    spans: list[dict[str, Any]],
    colors: dict[str, str],
    title: str | None = None,
    template: str | None = None,
) -> str:
    """One text with its spans, drawn by displaCy. The text goes in raw: displaCy escapes it."""
    from spacy import displacy

    options: dict[str, Any] = {"colors": {html.escape(k): v for k, v in colors.items()}}
    if template:
        options["template"] = template
    doc = {
        "text": text,
        "title": html.escape(title) if title else None,
        "ents": [
            {
                "start": s["start"],
                "end": s["end"],
                "label": html.escape(str(s["label"])),
                **({"params": s["params"]} if "params" in s else {}),
            }
            for s in spans
        ],
    }
    return displacy.render(
        [doc], style="ent", manual=True, page=False, jupyter=False, options=options
    )


def _type_legend(counts: Counter, colors: dict[str, str], totals: Counter | None = None) -> str:
    items = []
    for label in sorted(set(counts) | set(totals or ())):
        extra = (
            f" of {totals[label]}" if totals is not None and totals[label] != counts[label] else ""
        )
        items.append(
            f'<span class="swatch" style="background: {colors.get(label, "#ddd")}">'
            f"{html.escape(label)}</span>{counts[label]}{extra}&nbsp;&nbsp;"
        )
    return f'<p class="types">{"".join(items) or "no entities"}</p>'


def _problem_list(problems: list[str], what: str) -> str:
    if not problems:
        return ""
    shown = "".join(f"<li>{html.escape(p)}</li>" for p in problems[:SHOW_PROBLEMS])
    more = (
        f"<li>… and {len(problems) - SHOW_PROBLEMS} more</li>"
        if len(problems) > SHOW_PROBLEMS
        else ""
    )
    return (
        f'<details class="warn" open><summary>{len(problems)} {what}</summary>'
        f"<ul>{shown}{more}</ul></details>"
    )


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
        return [printable(line) for line in lines]  # ids and labels may hold escape sequences


def _missing_message(missing: list[str]) -> str:
    sample = ", ".join(repr(m) for m in missing[:5]) + (", …" if len(missing) > 5 else "")
    return (
        f"{len(missing)} document(s) with entities in the annotate output are not in --docs "
        f"({sample}); their entities are not shown. Give the same inputs annotate read, "
        "with the same --id-field"
    )


def check_entities(
    doc_id: str, text: str, entities: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The entities that can be drawn, and one line for each that cannot (and why)."""
    good: list[dict[str, Any]] = []
    problems: list[str] = []
    ordered = sorted(entities, key=lambda e: (_int(e.get("start")), _int(e.get("end"))))
    end_of_last = -1
    for entity in ordered:
        start, end, label = entity.get("start"), entity.get("end"), entity.get("label")
        said = entity.get("text")
        where = f"{doc_id}: {label} entity [{start}:{end}]" + (
            f" {said!r}" if said is not None else ""
        )
        if not (_is_int(start) and _is_int(end)) or not 0 <= start < end <= len(text):
            problems.append(
                f"{where}: offsets not whole numbers within the text ({len(text)} characters)"
            )
        elif said is not None and text[start:end] != said:
            problems.append(f"{where}: the text there is {text[start:end]!r}")
        elif start < end_of_last:
            problems.append(f"{where}: overlaps the entity before it")
        else:
            good.append(entity)
            end_of_last = end
    return good, problems


def _validated(entity: dict[str, Any]) -> dict[str, Any]:
    """Only what the page needs, as values of the types it expects: offsets (already checked
    to be ints within the text), the label as a string and the score as a finite number.
    Nothing else an input entity holds (displaCy `params`, `kb_url`, ...) reaches the page."""
    score = entity.get("score")
    valid = isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)
    return {
        "start": int(entity["start"]),
        "end": int(entity["end"]),
        "label": str(entity["label"]),
        **({"score": float(score)} if valid else {}),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if _is_int(value) else -1


def render_view(
    docs: list[ViewDoc],
    *,
    eligible: int | None = None,
    documents: int | None = None,
    model: dict[str, Any] | None = None,
    source: str = "",
    labels: tuple[str, ...] = (),
    totals: Counter | None = None,
    missing: list[str] | None = None,
    unreadable: int = 0,
    all_labels: Iterable[str] = (),
) -> View:
    """The viewer page for `docs`; entities whose offsets don't fit their text are listed, not
    drawn."""
    problems: list[str] = []
    counts: Counter = Counter()
    drawn: list[tuple[ViewDoc, list[dict[str, Any]]]] = []
    for doc in docs:
        good, bad = check_entities(doc.id, doc.text, doc.entities)
        problems.extend(bad)
        good = [_validated(e) for e in good]
        counts.update(e["label"] for e in good)
        drawn.append((doc, good))
    colors = label_colors([*counts, *(totals or ()), *all_labels])
    eligible = len(docs) if eligible is None else eligible
    documents = eligible if documents is None else documents
    missing = missing or []

    model_line = "model: unknown (this output carries no provenance metadata)"
    if model and model.get("model"):
        sha = model.get("model_sha256")
        model_line = f"model: {model['model']}" + (f" (sha256 {sha[:12]}…)" if sha else "")
    of_what = f"documents with {', '.join(labels)} entities" if labels else "documents"
    header = [
        f"<h1>Entities{': ' + html.escape(source) if source else ''}</h1>",
        f'<p class="meta">{html.escape(model_line)}</p>',
        f"<p>Showing <b>{len(drawn)}</b> of <b>{eligible}</b> {html.escape(of_what)}"
        + (f" ({documents} documents in all)" if documents != eligible else "")
        + f"; {sum(counts.values())} entities drawn.</p>",
        _type_legend(counts, colors, totals),
    ]
    if problems:
        header.append(
            f'<p class="warn"><b>{len(problems)} entities not drawn</b>: their offsets '
            "do not match the document text.</p>"
        )
        header.append(_problem_list(problems, "entities not drawn"))
    if missing:
        header.append(f'<p class="warn">{html.escape(_missing_message(missing))}.</p>')
    if unreadable:
        header.append(
            f'<p class="warn">{unreadable} records of the documents could not be read '
            "and were skipped.</p>"
        )
    articles = []
    for doc, good in drawn:
        where = f"{doc.source}:{doc.row}" if doc.source and doc.row is not None else doc.source
        entity_count = f"{len(good)} entities" if len(good) != 1 else "1 entity"
        articles.append(
            f'<article><div class="doc">{html.escape(where)} · {len(doc.text):,} '
            f"characters · {entity_count}</div>"
            + _displacy(doc.text, _hover(good), colors, title=doc.id, template=_hover_template())
            + "</article>"
        )
    page = _page(f"Entities {source}".strip(), "\n".join(header), "\n".join(articles))
    return View(
        html=page,
        shown=len(drawn),
        eligible=eligible,
        documents=documents,
        counts=counts,
        problems=problems,
        missing=missing,
        unreadable=unreadable,
    )


def _filter(entities: list[dict[str, Any]], labels: tuple[str, ...]) -> list[dict[str, Any]]:
    return [e for e in entities if not labels or e.get("label") in labels]


def build_view(
    spans_file: str,
    docs: list[str] | tuple[str, ...] = (),
    *,
    text_field: str = "text",
    id_field: str = "id",
    input_format: str | None = None,
    limit: int = 100,
    labels: tuple[str, ...] = (),
) -> View:
    """The viewer page for an `annotate` output, with the text from `docs` (or from the output).

    Without `docs`, the output must be in the documents layout and hold the text. With `labels`,
    only entities of those types are drawn and only documents that have one are shown.
    """
    from annotator.io.readers import ReaderOptions, expand_inputs, read_documents
    from annotator.records import RecordError

    if limit < 1:
        raise AnnotatorError("--limit must be at least 1")
    output = open_output(spans_file, text_field)
    totals: Counter = Counter()
    shown: list[ViewDoc] = []
    eligible = documents = unreadable = 0
    missing: list[str] = []

    if not docs:
        if output.layout == "spans":
            raise AnnotatorError(
                f"{spans_file}: a spans-layout output holds no document text; give "
                "the documents annotate read with --docs FILE"
            )
        for doc_id, text, entities in output.records:
            if text is None:
                raise AnnotatorError(
                    f"{spans_file}: record {doc_id!r} has no {text_field!r} field of text "
                    "(written with --drop-fields, or another --text-field?); "
                    "give the documents annotate read with --docs FILE"
                )
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
            raise AnnotatorError(
                f"none of the {len(by_id)} documents in {spans_file} is in --docs "
                f"(ids there look like {', '.join(repr(m) for m in list(by_id)[:3])}; "
                f"in --docs: {', '.join(repr(s) for s in list(seen)[:3]) or 'none'}). "
                "Give the inputs annotate read, with the same --id-field"
            )
    return render_view(
        shown,
        eligible=eligible,
        documents=documents,
        model=output.metadata,
        source=Path(spans_file).name,
        labels=labels,
        totals=totals,
        missing=missing,
        unreadable=unreadable,
    )


SHOW_SENTENCES = 200  # per error kind in errors.html


def _hover_template() -> str:
    """The viewer's entity: displaCy's, with its score shown on hover."""
    from spacy.displacy.templates import TPL_ENT

    return TPL_ENT.replace('<mark class="entity"', '<mark class="entity" title="{hover}"', 1)


def _hover(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (validated) entity with its hover text: its score, a number we format, so no text
    from the input reaches an attribute (the label is drawn beside the entity already)."""
    return [
        {
            **entity,
            "params": {
                "hover": f"score {entity['score']:.3f}" if "score" in entity else "no score"
            },
        }
        for entity in entities
    ]


def _error_template() -> str:
    from spacy.displacy.templates import TPL_ENT

    # displaCy merges each span's "params" into its template: an outline marks the wrong ones
    return TPL_ENT.replace(
        'style="background: {bg};', 'style="background: {bg}; outline: {outline};'
    )


def _describe(
    kind: str, gold: LabelledSpan | None, predicted: LabelledSpan | None, tokens: list[str]
) -> str:
    def words(span: LabelledSpan) -> str:
        return "“" + " ".join(tokens[span[0] : span[1]]) + "”"

    if kind == "wrong type":
        return f"{words(gold)}: {gold[2]} predicted as {predicted[2]}"
    if kind == "wrong boundary":
        return f"{words(gold)} {gold[2]}: predicted {words(predicted)} {predicted[2]}"
    if kind == "missed":
        return f"{words(gold)} {gold[2]}: not found"
    return f"{words(predicted)} {predicted[2]}: no such entity"


def _marked(
    spans: list[LabelledSpan], wrong: set, offsets: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Token spans as displaCy entities on the sentence text, the wrong ones outlined."""
    return [
        {
            "start": offsets[s[0]][0],
            "end": offsets[s[1] - 1][1],
            "label": s[2],
            "params": {"outline": "3px solid #d00000" if s in wrong else "none"},
        }
        for s in spans
    ]


def render_errors(
    matches: list[SentenceMatch], colors: dict[str, str], title: str, summary: str
) -> str:
    """errors.html: each wrong sentence, gold and predicted side by side, grouped by error kind."""
    template = _error_template()
    by_kind: dict[str, list[SentenceMatch]] = {kind: [] for kind in ERROR_KINDS}
    counts: Counter = Counter()
    for match in matches:
        kinds = [kind for kind, _, _ in match.errors]
        counts.update(kinds)
        for kind in dict.fromkeys(kinds):
            by_kind[kind].append(match)
    links = " · ".join(
        f'<a href="#{kind.replace(" ", "-")}">{kind}: {counts[kind]}</a>' for kind in ERROR_KINDS
    )
    header = (
        f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(summary)}</p>'
        f"<p>Errors: {links}. Outlined: the spans that are wrong. "
        'Figures: <a href="scores.png">scores.png</a>, '
        '<a href="confusion.png">confusion.png</a>.</p>'
        + '<p class="types">'
        + "".join(
            f'<span class="swatch" style="background: {color}">{html.escape(label)}</span>'
            for label, color in colors.items()
        )
        + "</p>"
    )
    sections = []
    for kind in ERROR_KINDS:
        items = by_kind[kind]
        parts = [
            f'<section id="{kind.replace(" ", "-")}"><h2>{kind.capitalize()} '
            f"({counts[kind]} in {len(items)} sentences)</h2>"
        ]
        if not items:
            parts.append("<p>None.</p>")
        for match in items[:SHOW_SENTENCES]:
            text, offsets = sentence_text(match.tokens)
            gold = _marked(match.gold, {e[1] for e in match.errors if e[1] is not None}, offsets)
            predicted = _marked(
                match.predicted, {e[2] for e in match.errors if e[2] is not None}, offsets
            )

            notes = "; ".join(
                _describe(k, g, p, match.tokens) for k, g, p in match.errors if k == kind
            )
            parts.append(
                f'<div class="note">sentence {match.index + 1}: {html.escape(notes)}</div>'
                '<div class="pair"><div><h3>gold</h3>'
                + _displacy(text, gold, colors, template=template)
                + "</div><div><h3>predicted</h3>"
                + _displacy(text, predicted, colors, template=template)
                + "</div></div>"
            )
        if len(items) > SHOW_SENTENCES:
            parts.append(f"<p>… and {len(items) - SHOW_SENTENCES} more sentences.</p>")
        parts.append("</section>")
        sections.append("".join(parts))
    return _page(title, header, "\n".join(sections))

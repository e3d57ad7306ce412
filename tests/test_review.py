"""The review: its store survives kill -9, its order puts the least sure sentences first and
spreads them over documents, its server serves this machine only and answers at once, and its
export is the column format `evaluate --raw` reads, with the page's spans."""

from __future__ import annotations

import http.client
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from annotator.cli import cli
from annotator.corpus import check_column_format, read_tagged_documents, token_spans
from annotator.records import Document, Entity
from annotator.review.export import column_text, export_sample
from annotator.review.sampling import ModelPass, review_order, run_model_pass
from annotator.review.server import ReviewServer, label_keys, render_page
from annotator.review.session import ReviewSession
from annotator.review.store import (
    DECISIONS,
    Decision,
    DecisionStore,
    Item,
    check_spans,
    read_decisions,
)

ROOT = Path(__file__).parents[1]

#: text a page must show as text: markup, quotes, control characters, a lone surrogate
HOSTILE = (
    'Bob <script>alert("x")</script> met <img src=x onerror=alert(1)> Ann & '
    "O'Neil in \x07Paris\x1b[31m today."
)
LONE_SURROGATE = "Ann met Bob \ud800 in Rome ."


def _item(number: int, text: str = "John Smith visited Paris .") -> Item:
    words = text.split(" ")
    tokens, position = [], 0
    for word in words:
        tokens.append((position, position + len(word)))
        position += len(word) + 1
    return Item(
        key=f"k{number}",
        doc=f"doc{number % 7}",
        source="docs.jsonl",
        row=number % 7 + 1,
        start=number * 100,
        text=text,
        tokens=tokens,
        model=[(0, 10, "PER", 0.42)],
    )


# --- store ------------------------------------------------------------------------------------

_WRITER = """
import sys
from annotator.review.store import Decision, DecisionStore
from tests.test_review import _item
store = DecisionStore(sys.argv[1])
for number in range(1000):
    store.append(Decision(_item(number), "accept", [(0, 10, "PER"), (19, 24, "LOC")]))
    print(number, flush=True)
"""


def test_every_acknowledged_decision_survives_kill_9_at_a_random_point(tmp_path):
    kill_after = random.Random().randrange(1, 900)  # a new point each run
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    acknowledged = -1
    for line in child.stdout:
        acknowledged = int(line)
        if acknowledged + 1 >= kill_after:
            child.send_signal(signal.SIGKILL)  # it goes on writing until the signal lands
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL, f"the writer ended before the kill: {kill_after}"
    decisions = read_decisions(tmp_path)
    assert len(decisions) >= kill_after
    for number in range(acknowledged + 1):
        decision = decisions[f"k{number}"]
        assert decision.item == _item(number)
        assert decision.spans == [(0, 10, "PER"), (19, 24, "LOC")]
    # opened again, the store goes on where the kill left it
    store = DecisionStore(tmp_path)
    store.append(Decision(_item(5000), "skip"))
    store.close()
    assert len(read_decisions(tmp_path)) == len(decisions) + 1


def test_a_torn_last_line_is_cut_and_the_last_decision_per_sentence_counts(tmp_path):
    store = DecisionStore(tmp_path)
    store.append(Decision(_item(1), "accept", [(0, 10, "PER")]))
    store.append(Decision(_item(2), "skip"))
    store.append(Decision(_item(1), "accept", [(0, 10, "ORG")]))  # decided again
    store.close()
    with open(tmp_path / DECISIONS, "ab") as handle:
        handle.write(b'{"key": "k3", "doc"')  # a kill mid-line
    store = DecisionStore(tmp_path)
    assert list(store.latest) == ["k2", "k1"] and store.latest["k1"].spans == [(0, 10, "ORG")]
    assert store.counts() == {"accepted": 0, "corrected": 1, "skipped": 1}
    store.append(Decision(_item(4), "accept", [(0, 10, "PER")]))
    store.close()
    assert list(read_decisions(tmp_path)) == ["k2", "k1", "k4"]
    (tmp_path / DECISIONS).write_text("not json\n")
    with pytest.raises(Exception, match=r"decisions.jsonl:1: not a review decision"):
        read_decisions(tmp_path)


def test_spans_from_the_page_must_sit_on_token_boundaries():
    item = _item(0)  # John Smith visited Paris .
    assert check_spans(item, [[19, 24, "LOC"], [0, 10, "PER"]], {"PER", "LOC"}) == [
        (0, 10, "PER"),
        (19, 24, "LOC"),
    ]
    for spans, reason in [
        ([[1, 10, "PER"]], "token boundaries"),
        ([[0, 9, "PER"]], "token boundaries"),
        ([[0, 10, "XYZ"]], "unknown label"),
        ([[0, 10, "PER"], [5, 18, "PER"]], "token boundaries|overlap"),
        ([[0, 10, "PER"], [0, 4, "PER"]], "overlap"),
        ([[0, True, "PER"]], "whole numbers"),
        (["PER"], r"\[start, end, label\]"),
    ]:
        with pytest.raises(ValueError, match=reason):
            check_spans(item, spans, {"PER", "LOC"})


# --- order ------------------------------------------------------------------------------------


def _model_pass(scores_per_doc: list[list[float | None]]) -> ModelPass:
    """Documents of sentences with one span each scored as given (None: no span)."""
    entities = [
        [Entity(0, 4, "Name", "PER", s, n) for n, s in enumerate(scores) if s is not None]
        for scores in scores_per_doc
    ]
    return ModelPass("test", [len(s) for s in scores_per_doc], entities)


def test_least_sure_sentences_come_first_and_no_document_fills_the_first_page():
    rng = random.Random(3)
    odd_doc = [rng.uniform(0.01, 0.1) for _ in range(40)]  # one document the model is lost in
    others = [[rng.uniform(0.2, 0.99) for _ in range(6)] + [None] for _ in range(12)]
    model_pass = _model_pass([odd_doc, *others])
    candidates = model_pass.candidates()
    order = review_order(candidates)
    assert sorted(order.tolist()) == list(range(len(candidates)))
    page = order[:20]
    docs = candidates.doc[page].tolist()
    assert candidates.sureness[page[0]] == candidates.sureness.min()  # the least sure first
    assert max(docs.count(d) for d in set(docs)) <= 3 and len(set(docs)) >= 8
    # each document's least sure sentence comes before its others, and documents come in
    # the order of their least sure sentence
    firsts = [int(np.flatnonzero(candidates.doc[order] == d)[0]) for d in range(13)]
    lowest = [min(s for s in scores if s is not None) for scores in [odd_doc, *others]]
    assert sorted(range(13), key=firsts.__getitem__) == sorted(range(13), key=lowest.__getitem__)
    # within a document, least sure first: its sentence without spans comes last
    for d in range(1, 13):
        rows = [i for i in order if candidates.doc[i] == d]
        assert candidates.sureness[rows].tolist() == sorted(candidates.sureness[rows].tolist())
        assert candidates.sureness[rows[-1]] == 1.0


def test_choosing_among_10000_documents_takes_well_under_5_seconds():
    rng = np.random.default_rng(0)
    scores = [[float(s) for s in rng.uniform(0, 1, 20)] for _ in range(10_000)]
    model_pass = _model_pass(scores)
    began = time.perf_counter()
    order = review_order(model_pass.candidates())
    seconds = time.perf_counter() - began
    assert len(order) == 200_000
    assert seconds < 5, f"{seconds:.2f} s to order 200,000 sentences of 10,000 documents"


# --- a session on the tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def annotator(tiny_model, single_thread):
    from annotator.pipeline import Annotator

    with Annotator(str(tiny_model), device="cpu", split_process=False) as annotator:
        yield annotator


def _session(annotator, texts: list[str], folder: Path) -> ReviewSession:
    documents = [Document(f"d{i}", text, "docs.jsonl", i + 1) for i, text in enumerate(texts)]
    model_pass, problems = run_model_pass(annotator, documents, "test", progress=False)
    assert len(problems) == sum(LONE_SURROGATE in text for text in texts)
    assert model_pass.labels == annotator.labels
    return ReviewSession(documents, model_pass, annotator.segmenter, DecisionStore(folder), "tiny")


TEXTS = [
    "John Smith works for Siemens in London . Prices rose sharply last week .",
    "Maria Garcia arrived in Paris on Friday . 2,000 - 3,000 .",
    "Prices rose sharply last week . Oxfam shares fell 3 percent in Tokyo trading .",
]


def test_next_sentences_skip_decided_repeated_and_letterless_ones(annotator, tmp_path):
    session = _session(annotator, TEXTS, tmp_path)
    seen: list[str] = []
    while items := session.next_items(2):
        item = items[0]
        assert item.text == TEXTS[int(item.doc[1:])][item.start : item.start + len(item.text)]
        session.decide(item.key, "skip", [])
        seen.append(item.text)
    assert "2,000 - 3,000 ." not in seen  # nothing to label
    assert seen.count("Prices rose sharply last week .") == 1  # each text once
    assert len(seen) == 4 and session.state()["done"] == 4


def test_the_model_pass_is_kept_for_the_same_model_and_documents_only(annotator, tmp_path):
    session = _session(annotator, TEXTS, tmp_path / "sample")
    session.model_pass.save(tmp_path)
    kept = ModelPass.load(tmp_path, "test", session.documents)
    assert kept == session.model_pass and kept.labels == annotator.labels
    assert ModelPass.load(tmp_path, "another model or other documents", session.documents) is None
    session.close()


@pytest.fixture()
def server(annotator, tmp_path):
    session = _session(annotator, [*TEXTS, HOSTILE, LONE_SURROGATE], tmp_path / "sample")
    server = ReviewServer(session, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    session.close()


def _request(server, method: str, path: str, body=None, **headers: str):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers.setdefault("Host", f"127.0.0.1:{server.port}")
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    connection.request(method, path, data, headers)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response, payload


def test_the_server_refuses_other_hosts_origins_and_tokenless_calls(server):
    token = {"X-Review-Token": server.token}
    response, page = _request(server, "GET", "/")
    assert response.status == 200 and server.token.encode() in page
    assert "script-src 'nonce-" in response.headers["Content-Security-Policy"]
    assert b"http://" not in page and b"https://" not in page  # no external assets
    for host in ("evil.example:80", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
        response, _ = _request(server, "GET", "/", Host=host)
        assert response.status == 403, host
    response, _ = _request(server, "GET", "/api/next")
    assert response.status == 403
    response, _ = _request(server, "GET", "/api/next", Origin="http://evil.example", **token)
    assert response.status == 403
    response, body = _request(server, "GET", "/api/next", **token)
    assert response.status == 200 and json.loads(body)["items"]
    response, _ = _request(
        server, "POST", "/api/decide", {"key": "x"}, **token, **{"Content-Type": "text/plain"}
    )
    assert response.status == 415


def test_a_decision_is_answered_in_under_100_ms_and_bad_ones_are_refused(server):
    token = {"X-Review-Token": server.token}
    _, body = _request(server, "GET", "/api/next", **token)
    seconds = []
    while items := json.loads(body)["items"]:
        item = items[0]
        response, body = _request(server, "POST", "/api/bad", {}, **token)
        assert response.status == 404
        response, body = _request(
            server, "POST", "/api/decide", {"key": item["key"], "action": "accept", "spans": [[0]]}
        )
        assert response.status == 403  # no token
        response, body = _request(
            server,
            "POST",
            "/api/decide",
            {"key": item["key"], "action": "accept", "spans": [[0, 1, "NOPE"]]},
            **token,
        )
        assert response.status == 400 and b"decision not kept" in body
        began = time.perf_counter()
        response, body = _request(
            server,
            "POST",
            "/api/decide",
            {"key": item["key"], "action": "accept", "spans": item["spans"]},
            **token,
        )
        seconds.append(time.perf_counter() - began)
        assert response.status == 200, body
    assert json.loads(body)["done"] == len(seconds) >= 4
    assert sorted(seconds)[len(seconds) // 2] < 0.1, f"median {sorted(seconds)} s"


def test_hostile_text_reaches_the_page_only_as_json_data(server, tmp_path):
    page = render_page(server.session, "token", "nonce")
    assert page.count("<script") == 2  # the config block and the page's own script
    session = server.session
    shown = []
    while items := session.next_items(1):
        shown.append(items[0].text)
        if "<script>" in items[0].text:
            break
        session.decide(items[0].key, "skip", [])
    assert shown[-1] == HOSTILE
    token = {"X-Review-Token": server.token}
    response, body = _request(server, "GET", "/api/next", **token)
    assert response.headers["Content-Type"] == "application/json"
    assert b"<script>" not in body and b"\x07" not in body  # JSON escapes: never markup
    assert json.loads(body)["items"][0]["text"] == HOSTILE
    # spaCy cannot split a text with a lone surrogate: that document is left out, not shown
    assert session.model_pass.sentences[-1] is None
    # were one decided, it is stored (as ASCII JSON) and exported with U+FFFD in its place
    store = DecisionStore(tmp_path)
    store.append(Decision(_item(1, LONE_SURROGATE), "accept", [(0, 3, "PER")]))
    store.close()
    assert read_decisions(tmp_path)["k1"].item.text == LONE_SURROGATE
    export_sample(tmp_path, tmp_path / "out.conll")
    assert "\ufffd O" in (tmp_path / "out.conll").read_text(encoding="utf-8")


def test_label_keys_are_one_per_label_and_never_the_page_keys():
    keys = label_keys(["PER", "ORG", "LOC", "MISC", "SPORT", "STREET", "ZONE", "P"])
    assert keys["PER"] == "p" and keys["ORG"] == "o" and keys["LOC"] == "l"
    assert keys["SPORT"] == "r" and "s" not in keys.values() and "z" not in keys.values()
    assert len(set(keys.values())) == len(keys)


# --- export -------------------------------------------------------------------------------------


def test_export_writes_accepted_sentences_as_bio_columns_with_the_pages_spans(tmp_path):
    store = DecisionStore(tmp_path)
    first = _item(0, "New York Times said John Smith left .")  # doc0
    later = _item(7, "Ann went to Paris\u00a0.")  # doc0 too, further on in its text
    store.append(Decision(later, "accept", [(0, 3, "PER"), (12, 19, "LOC")]))
    store.append(Decision(_item(1, "Nobody here ."), "skip"))  # doc1
    store.append(Decision(_item(2), "accept", []))  # doc2: accepted without entities
    store.append(Decision(first, "accept", [(0, 14, "ORG"), (20, 30, "PER")]))
    store.close()
    out = tmp_path / "sample.conll"
    exported = export_sample(tmp_path, out)
    assert (exported.documents, exported.sentences, exported.entities, exported.skipped) == (
        2,
        3,
        4,
        1,
    )
    check_column_format(out, "text,ner")
    text = out.read_text(encoding="utf-8")
    assert text.count("-DOCSTART- O") == 2 and "Nobody" not in text
    doc0, doc2 = read_tagged_documents(out, "text,ner")
    assert [t for t, _ in doc2[0]] == "John Smith visited Paris .".split()
    assert all(tag == "O" for _, tag in doc2[0])
    for item, sentence in zip([first, later], doc0, strict=True):  # in text order
        tokens = [item.text[s:e].replace("\u00a0", "\ufffd") for s, e in item.tokens]
        assert [t for t, _ in sentence] == tokens  # a column break inside a token is replaced
        spans = [
            (item.tokens[a][0], item.tokens[b - 1][1], label)
            for a, b, label in token_spans([tag for _, tag in sentence])
        ]
        assert spans == store.latest[item.key].spans  # the same characters


def test_export_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["review", "export", str(tmp_path / "nope"), "-o", "x.conll"])
    assert result.exit_code == 2 and "no such sample folder" in result.output
    store = DecisionStore(tmp_path)
    store.append(Decision(_item(1), "skip"))
    store.close()
    result = runner.invoke(cli, ["review", "export", str(tmp_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no accepted sentence" in result.output
    result = runner.invoke(cli, ["review", str(tmp_path / "missing.jsonl"), "--out", "s"])
    assert result.exit_code == 2 and "no such file" in result.output
    assert column_text([]) == ""

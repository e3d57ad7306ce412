"""The labelling page's server: Python's ThreadingHTTPServer on 127.0.0.1, nothing else.

The page (page/: HTML, CSS and JS, inlined into one response) asks for the next sentences and
posts each decision; a decision is on disk (store.py) before the answer leaves. Only this
machine is served: the socket listens on 127.0.0.1, a request whose Host is not 127.0.0.1 or
localhost at our port is refused (a DNS-rebinding page's would name its own host), and every
API call must carry the page's token in a header, which no other site's page can send without
a preflight that we never answer. Document text reaches the page only as JSON that the
script puts into the page with `textContent`, never as markup.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import re
import secrets
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from annotator.review.session import ReviewSession
from annotator.review.store import Decision, Item
from annotator.views.pages import label_colors

log = logging.getLogger("annotator")

HOST = "127.0.0.1"
#: reserved keys of the page: s skips, z goes back; labels take the first free letter
RESERVED_KEYS = "sz"
MAX_BODY = 1 << 20


def label_keys(labels: list[str]) -> dict[str, str]:
    """One key per label: its first free letter, else a digit."""
    keys: dict[str, str] = {}
    taken = set(RESERVED_KEYS)
    digits = iter("123456789")
    for label in labels:
        letter = next((c for c in label.lower() if "a" <= c <= "z" and c not in taken), None)
        keys[label] = letter or next(digits, "")
        taken.add(keys[label])
    return keys


def _item_json(item: Item, decision: Decision | None = None) -> dict[str, Any]:
    spans = (
        [list(s) for s in decision.spans]
        if decision and decision.action == "accept"
        else [[s, e, label] for s, e, label, _ in item.model]
    )
    return {
        "key": item.key,
        "doc": item.doc,
        "where": f"{item.source}:{item.row}" if item.source else "",
        "text": item.text,
        "tokens": [list(t) for t in item.tokens],
        "model": [list(m) for m in item.model],
        "spans": spans,
        "decided": decision.action if decision else None,
    }


@functools.cache
def _page_parts() -> tuple[str, str, str]:
    folder = resources.files("annotator.review") / "page"
    return tuple(
        (folder / name).read_text(encoding="utf-8")
        for name in ("review.html", "review.css", "review.js")
    )


def _script_json(data: Any) -> str:
    """ASCII JSON that can sit inside a <script> element (no `<`, `>` or `&` can close it),
    and that no browser could take for markup should it ever sniff a response."""
    text = json.dumps(data)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(session: ReviewSession, token: str, nonce: str) -> str:
    template, style, script = _page_parts()
    config = {
        "token": token,
        "labels": session.labels,
        "colors": label_colors(session.labels),
        "keys": label_keys(session.labels),
        "model": session.model_name,
    }
    values = {
        "nonce": nonce,
        "style": style,
        "script": script,
        "config": _script_json(config),
        "model": html.escape(session.model_name),
    }
    # one pass over the template: nothing inserted is searched for placeholders again
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match[1]], template)


def _csp(nonce: str) -> str:
    """The viewer's policy, with this page's own script and styles let in by nonce, and its
    requests to this server."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src data:; form-action 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, session: ReviewSession, port: int = 0) -> None:
        self.session = session
        self.token = secrets.token_urlsafe(24)
        super().__init__((HOST, port), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def allowed_hosts(self) -> set[str]:
        return {f"{host}:{self.port}" for host in (HOST, "localhost")}


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "annotator-review"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("review page: " + format, *args)

    def _send(self, status: int, body: bytes, content_type: str, nonce: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _csp(nonce or secrets.token_urlsafe(8)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, _script_json(data).encode("ascii"), "application/json")

    def _refuse(self, status: int, reason: str) -> None:
        self._json({"error": reason}, status)

    def _allowed(self, api: bool) -> bool:
        """This machine's page only: our Host; for the API, our token and origin too."""
        if self.headers.get("Host", "") not in self.server.allowed_hosts():
            self._refuse(HTTPStatus.FORBIDDEN, "this page is served to 127.0.0.1 only")
            return False
        origin = self.headers.get("Origin")
        if origin is not None and origin.removeprefix("http://") not in self.server.allowed_hosts():
            self._refuse(HTTPStatus.FORBIDDEN, "requests from other sites are refused")
            return False
        if api and not secrets.compare_digest(
            self.headers.get("X-Review-Token", ""), self.server.token
        ):
            self._refuse(HTTPStatus.FORBIDDEN, "missing or wrong page token: reload the page")
            return False
        return True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/":
            if self._allowed(api=False):
                nonce = secrets.token_urlsafe(16)
                page = render_page(self.server.session, self.server.token, nonce)
                self._send(HTTPStatus.OK, page.encode("utf-8"), "text/html; charset=utf-8", nonce)
            return
        if not self._allowed(api=True):
            return
        session = self.server.session
        if url.path == "/api/next":
            items = [_item_json(item) for item in session.next_items()]
            self._json({**session.state(), "items": items})
        elif url.path == "/api/item":
            found = session.item(parse_qs(url.query).get("key", [""])[0])
            if found is None:
                self._refuse(HTTPStatus.NOT_FOUND, "no such sentence")
            else:
                self._json({**session.state(), "item": _item_json(*found)})
        else:
            self._refuse(HTTPStatus.NOT_FOUND, "no such page")

    def do_POST(self) -> None:
        if not self._allowed(api=True):
            return
        if urlsplit(self.path).path != "/api/decide":
            self._refuse(HTTPStatus.NOT_FOUND, "no such page")
            return
        if self.headers.get_content_type() != "application/json":
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")
            return
        length = self.headers.get("Content-Length", "")
        length = int(length) if length.isdigit() else 0
        if not 0 < length <= MAX_BODY:
            self._refuse(HTTPStatus.BAD_REQUEST, "a decision is one small JSON object")
            return
        try:
            body = json.loads(self.rfile.read(length))
            self.server.session.decide(body["key"], body["action"], body.get("spans", []))
        except (ValueError, KeyError, TypeError) as exc:
            self._refuse(HTTPStatus.BAD_REQUEST, f"decision not kept: {exc}")
            return
        except OSError as exc:  # the disk: the page must say the decision was not saved
            self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, f"decision not saved: {exc}")
            return
        session = self.server.session
        items = [_item_json(item) for item in session.next_items()]
        self._json({**session.state(), "items": items})

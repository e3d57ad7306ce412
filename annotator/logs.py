"""Logging: everything goes to stderr, so stdout carries only data.

Flair adds its own stdout handler when it is first imported (seconds of torch), so `configure`
does not import it: it records how Flair should log, and `quiet_flair` (called where Flair is
imported to load or train a model) takes Flair's logger over then.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

_flair_setup: tuple[logging.Handler, int] | None = None  # set by configure(): (handler, level)


def quiet_flair() -> None:
    """Flair's info lines (tag dictionaries, model summaries) off for this process, and its
    logger on configure()'s handler when configure() ran."""
    import flair  # noqa: F401

    logger = logging.getLogger("flair")
    if _flair_setup is None:
        logger.setLevel(logging.WARNING)
        return
    logger.handlers[:] = [_flair_setup[0]]
    logger.propagate = False
    logger.setLevel(_flair_setup[1])


def flair_imported() -> None:
    """Where Flair gets imported to do work: its logger joins configure()'s, if that ran (a
    library user's logging stays theirs)."""
    if _flair_setup is not None:
        quiet_flair()


def configure(verbose: bool = False, label: str = "%(name)s") -> None:
    """annotator's and Flair's loggers to stderr in one format; Flair's info lines with
    `verbose`. Flair is not imported here (see quiet_flair)."""
    global _flair_setup
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {label}: %(message)s", "%H:%M:%S"))
    for name in ("annotator", "flair"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO if verbose or name == "annotator" else logging.WARNING)
    _flair_setup = (handler, logging.INFO if verbose else logging.WARNING)
    if "flair" in sys.modules:
        quiet_flair()


@contextlib.contextmanager
def flair_quieted() -> Iterator[None]:
    """Flair's info lines off for a block (it logs a tag dictionary to stdout on load), and the
    hub client's retry warnings (a hub name without a network would print a dozen), restored
    after: a library user's logging stays theirs."""
    quieted = {"flair": logging.WARNING, "huggingface_hub": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in quieted}
    for name, floor in quieted.items():
        logging.getLogger(name).setLevel(max(levels[name], floor))
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (escape sequences too) as \\xNN, lone
    surrogates as \\udXXX."""
    text = text.translate(_CONTROL)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def say(line: str, err: bool = True) -> None:
    """A message for the terminal, its control characters (line breaks aside) escaped as the
    log lines' are: a path argument may hold an escape sequence (`\\e[2J` clears a screen)."""
    import click

    click.echo("\n".join(printable(part) for part in line.split("\n")), err=err)

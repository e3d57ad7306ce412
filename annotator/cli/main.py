"""The `annotator` command group: every command registered on it, user errors turned into
one line and an exit code, signals into a clean stop."""

from __future__ import annotations

from typing import Any

import click

from annotator import logs
from annotator.cli.adapt import adapt
from annotator.cli.annotate import annotate, tag
from annotator.cli.corpus import corpus
from annotator.cli.machine import bench, info
from annotator.cli.review import review
from annotator.cli.training import calibrate, evaluate, package_model, train
from annotator.cli.views import plot, view
from annotator.errors import AnnotatorError
from annotator.version import __version__

#: what a stop leaves: a file output as it was before, a directory run's parts, a checkpoint
_STOPPED = "stopped; unfinished files removed (finished parts and checkpoints stay: --resume)"


class _Terminated(BaseException):
    """SIGTERM, raised where the program stands, so that temporary files are removed on the way
    out (as Ctrl-C's KeyboardInterrupt is)."""


class _Group(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback;
    Ctrl-C exits 130 and SIGTERM 143, each with one line, temporary files removed."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:  # shown by Click: a value it quotes may hold escapes
            exc.message = logs.printable(exc.message)
            raise
        except AnnotatorError as exc:
            logs.say(f"Error: {exc}")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(f"Interrupted (Ctrl-C): {_STOPPED}", err=True)
            ctx.exit(130)
        except _Terminated:
            click.echo(f"Terminated (SIGTERM): {_STOPPED}", err=True)
            ctx.exit(143)


def _on_sigterm(signum: int, frame: Any) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: the way out is under way
    raise _Terminated()


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="annotator")
@click.option("-v", "--verbose", is_flag=True, help="Show Flair's training and loading log.")
def cli(verbose: bool) -> None:
    """Named-entity annotation of large document collections with Flair and spaCy.

    \b
    Example:
      annotator annotate examples/documents.jsonl -o entities.parquet
    """
    logs.configure(verbose)  # imports no Flair: that waits for a command that loads a model


def main() -> None:
    import signal
    import sys

    from annotator import streams

    streams.guard()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli(prog_name="annotator")
    except SystemExit as done:
        code = done.code
    except streams.StreamFailed as exc:  # in Click's own output (--help, a usage message)
        logs.say(f"Error: {exc}")
        code = 1
    try:  # what is still buffered fails here, not in the interpreter's exit
        sys.stdout.flush()
    except streams.StreamFailed as exc:
        logs.say(f"Error: {exc}")
        code = code or 1
    except BrokenPipeError:
        streams.drop_stdout()
        code = code or 141
    sys.exit(code)


for command in (
    annotate,
    tag,
    corpus,
    info,
    bench,
    train,
    evaluate,
    calibrate,
    adapt,
    package_model,
    plot,
    view,
    review,
):
    cli.add_command(command)

"""The command line: each command parses its options and calls one library function.

Exit codes: 0 success; 1 failure (one message on stderr); 2 usage error (Click's own and
annotator's UsageError); 3 finished, but some input records were skipped (see --errors).

Nothing heavy is imported before the arguments are parsed and checked: Flair and torch load
only inside the commands that tag or train, after every option, input and output was checked,
so a usage error or --help answers at once.
"""

from __future__ import annotations

from typing import Any

import click

from annotator import __version__, logs
from annotator.errors import AnnotatorError

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
        except AnnotatorError as exc:
            click.echo(f"Error: {exc}", err=True)
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

    signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="annotator")


# the commands register themselves on `cli` when their modules are imported
from annotator.cli import annotate, corpus, machine, review, training, views  # noqa: E402, F401, I001

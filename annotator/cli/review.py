"""`annotator review DOCS... --out SAMPLE_DIR` (the labelling page) and `review export`."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import click

from annotator.cli.options import DEVICE, MODEL, input_options
from annotator.errors import AnnotatorError, UsageError
from annotator.files import check_parent

DEFAULT_PORT = 8765


class _StartByDefault(click.Group):
    """`annotator review DOCS...` is `annotator review start DOCS...`: whatever does not name
    a subcommand starts the page (a document named `export` is given as ./export)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=_StartByDefault,
    short_help="Label a sample of your documents in a local page.",
    epilog="Examples:\n\n\b\n  annotator review contracts/ --out sample/\n"
    "  annotator review export sample/ -o sample.conll",
)
def review() -> None:
    """Label a sample of your own documents in a page on this machine, the sentences the model
    is least sure of first, then export the labels for `evaluate --raw`, `calibrate` and
    `adapt`.

    `annotator review DOCS... --out SAMPLE_DIR` is short for `annotator review start`."""


@review.command(
    short_help="Open the labelling page on DOCS.",
    epilog="Example:\n\n\b\n  annotator review contracts/ --out sample/ --model default",
)
@click.argument("inputs", nargs=-1, required=True, metavar="DOCS...")
@click.option(
    "--out",
    "-o",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Sample folder: every decision is saved here at once; the same folder resumes.",
)
@MODEL
@DEVICE
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port on 127.0.0.1 (0: any free port).",
)
@click.option("--no-browser", is_flag=True, help="Do not open the page in a browser.")
@input_options
def start(
    inputs: tuple[str, ...],
    folder: Path,
    model: str | None,
    device: str,
    port: int,
    no_browser: bool,
    input_format: str | None,
    text_field: str,
    id_field: str,
) -> None:
    """Run the model over DOCS (files, folders or globs, as annotate reads them), then serve
    the labelling page on 127.0.0.1 until Ctrl-C."""
    from annotator.io.readers import ReaderOptions
    from annotator.models import resolve_model

    for item in inputs:
        if item == "-":
            raise UsageError("review reads files, not stdin: give files or folders")
        if not os.path.exists(item) and not glob.glob(item, recursive=True):
            raise UsageError(f"{item}: no such file or directory")
    check_parent(folder, "--out")
    resolve_model(model)

    from annotator.review.server import ReviewServer
    from annotator.review.session import open_session

    options = ReaderOptions(input_format, text_field, id_field)
    session = open_session(list(inputs), folder, model, device, options)
    try:
        try:
            server = ReviewServer(session, port)
        except OSError as exc:
            raise AnnotatorError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); "
                "give another --port (0: any free one)"
            ) from None
        state = session.state()
        click.echo(
            f"Review page: {server.url}  ({state['done']} sentences decided so far, "
            f"saved in {session.store.path}; Ctrl-C stops)",
            err=True,
        )
        if not no_browser:
            import webbrowser

            webbrowser.open(server.url)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo(
                f"Stopped. {session.state()['done']} decisions are in {folder}; "
                f"export them with: annotator review export {folder} -o sample.conll",
                err=True,
            )
        finally:
            server.server_close()
    finally:
        session.close()


@review.command(
    "export",
    short_help="Write a sample folder's labels as a column file.",
    epilog="Example:\n\n\b\n  annotator review export sample/ -o sample.conll\n"
    "  annotator evaluate adapted.pt sample.conll --column-format text,ner --raw",
)
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Column file to write: `token TAG` lines (BIO), a blank line after each sentence, "
    "-DOCSTART- before each document.",
)
def export(folder: Path, output: Path) -> None:
    """Write the sentences accepted in the page (as corrected) from sample FOLDER to a
    two-column file; skipped sentences are left out."""
    from annotator.review.export import export_sample

    if not folder.is_dir():
        raise UsageError(f"{folder}: no such sample folder")
    check_parent(output, "-o")
    exported = export_sample(folder, output)
    click.echo(f"{output}: {exported.line()}", err=True)

"""Where a run's output lives: one file, stdout, or a directory of part files."""

from __future__ import annotations

import os

STDOUT = "-"


def is_directory_output(output: str | None) -> bool:
    """`-o DIR/` (a trailing slash) or an existing directory."""
    return (
        bool(output)
        and output != STDOUT
        and (output.endswith(("/", os.sep)) or os.path.isdir(output))
    )

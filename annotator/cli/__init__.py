"""The command line: each command parses its options and calls one library function.

Exit codes: 0 success; 1 failure (one message on stderr); 2 usage error (Click's own and
annotator's UsageError); 3 finished, but some input records were skipped (see --errors).

Nothing heavy is imported before the arguments are parsed and checked: Flair and torch load
only inside the commands that tag or train, after every option, input and output was checked,
so a usage error or --help answers at once.
"""

from annotator.cli.main import cli, main

__all__ = ["cli", "main"]

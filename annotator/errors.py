"""Errors a user can cause: the CLI turns each into one clear message and a non-zero exit."""


class AnnotatorError(Exception):
    """A problem with the user's input, files or environment (never a bug): shown without a
    traceback."""

    exit_code = 1


class CorpusError(AnnotatorError):
    """A corpus file is missing, unreadable, or fails its checksum."""


class ModelError(AnnotatorError):
    """A model cannot be found, fetched or loaded."""


class MissingModel(ModelError):
    """A model path that does not exist: a bad value, found before anything loads (exit 2)."""

    exit_code = 2


class RecordFailed(Exception):
    """One record cannot be written (or split, or tagged): the pipeline reports it as a bad
    record, with this reason, and the run goes on."""


class UsageError(AnnotatorError):
    """Options that cannot work together or values out of range: exit 2, like Click's own."""

    exit_code = 2

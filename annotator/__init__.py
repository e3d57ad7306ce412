"""annotator: batch named-entity annotation of document collections with Flair and spaCy.

The Python API mirrors the command line::

    from annotator import Annotator, annotate
    annotator = Annotator()                      # the packaged default model
    annotator.annotate_text("Angela Merkel visited Paris.")
    annotate(["docs.jsonl"], "entities.parquet", annotator=annotator)
"""

from annotator.version import __version__

__all__ = ["Annotator", "AnnotateOptions", "annotate", "__version__"]


def __getattr__(name: str):
    # imported on first use: `annotator --help` and `import annotator` stay fast
    if name in ("Annotator", "AnnotateOptions", "annotate"):
        from annotator import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)

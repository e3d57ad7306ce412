"""The Python API: load a tagger once, annotate texts or whole files.

Run: python examples/api.py  (uses the packaged default model, or $ANNOTATOR_MODEL)
"""

import os

from annotator import Annotator, annotate

# `with`: the sentence-splitter process (on a machine with more than one CPU) ends with the block
with Annotator(model=os.environ.get("ANNOTATOR_MODEL")) as annotator:
    for entities in annotator.annotate_texts(
        [
            "Angela Merkel met Emmanuel Macron in Paris on Monday.",
            "Siemens shares rose 3 percent in Frankfurt trading.",
        ]
    ):
        print([(entity.text, entity.label, round(entity.score, 2)) for entity in entities])

    # The same pipeline as `annotator annotate`, from Python: files in, Parquet out.
    os.makedirs("examples/output", exist_ok=True)
    summary = annotate(["examples/letters"], "examples/output/letters.parquet", annotator=annotator)
    print(summary.line())

"""annotator: batch named-entity annotation with Flair and spaCy."""
__version__ = "0.1.0"

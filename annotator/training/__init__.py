"""Training a tagger: config and presets, embedding recipes, the run's bookkeeping, two trainers."""

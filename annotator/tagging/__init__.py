"""Token lists in, entity spans out: Flair's predict or the vectorised fast engine."""

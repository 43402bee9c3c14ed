"""Code systems, concept maps: how medmeta names clinical concepts (no licensed content shipped)."""

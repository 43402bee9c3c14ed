"""Compound activity (issue 15): structures, activity tables, per-target tasks, fingerprints and the
baselines medicinal chemists trust. RDKit and scikit-learn come with the optional ``chem`` extra;
nothing here is imported by the core install's start-up path."""

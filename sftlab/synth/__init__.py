"""Data production: teachers generate, verifiers and filters decide what becomes training data.

Every step is records -> records like the curation steps: kept records carry `meta.synth` provenance, removed
ones go to a dropped file with a `reason`, and the same seed gives the same output.
"""

"""Synthetic, deterministic multi-site medical data for tests, demos and benchmarks.

``generate_cohort`` writes sites A (CSV), B (FHIR) and C (Parquet), DICOM images and,
optionally, hostile files; ``generate_images`` writes DICOM files only (ingest benchmarks).
"""

from medmeta.synth.dicom_images import generate_images
from medmeta.synth.generate import generate_cohort

__all__ = ["generate_cohort", "generate_images"]

"""DICOM cases to the model's input: decoded exactly as ingest decodes them (``medmeta.dicom.pixels``:
middle frame, modality rescale, VOI window, photometric, normalised to [0, 1], resized, float16).

Refused, naming the file: what ingest would quarantine (not DICOM, corrupt, no pixels, too large),
a modality the model never saw in training (its card's ``dicom_modalities``), and an image with
fewer rows or columns than the validation rules' minimum (``images`` rules on height and width).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from medmeta.errors import MedmetaError, Rejected
from medmeta.predict.cases import DEFAULT_MAX_INPUT_BYTES, read_input


@lru_cache(maxsize=1)
def minimum_side() -> int:
    """The smallest height/width the validation rules accept for an image (0 when they set none)."""
    from validation.rules import load_rules

    floors = [float(rule.kwargs["min_value"]) for rule in load_rules().tables.get("images", ())
              if rule.expectation == "ExpectColumnValuesToBeBetween"
              and rule.kwargs.get("column") in ("height", "width")
              and rule.kwargs.get("min_value") is not None]
    return int(max(floors, default=0))


def load_images(files: list[Path], size: int, modalities: list[str] | None, role: str,
                max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> np.ndarray:
    """``[N, 1, size, size]`` float32 in [0, 1], one image per file, in order; each file read once
    from a descriptor checked to be a regular file of at most ``max_bytes`` (``cases.read_input``)."""
    from medmeta.dicom.pixels import decode_pixels, read_dicom
    from medmeta.ingest.config import IngestConfig

    max_pixels = IngestConfig().max_pixels_per_image
    floor = minimum_side()
    out = np.empty((len(files), 1, size, size), np.float32)
    for i, path in enumerate(files):
        data = read_input(path, f"{role} image", max_bytes)
        try:
            ds = read_dicom(data, max_pixels=max_pixels)
            modality = str(ds.get("Modality", "") or "").strip().upper()
            if modalities and modality not in modalities:
                raise MedmetaError(f"{role} image {path}: modality {modality or '(none)'}, but the model was "
                                   f"trained on {', '.join(modalities)} images only")
            pixels = decode_pixels(ds, size=size)
        except Rejected as rejected:
            raise MedmetaError(f"{role} image {path}: {rejected.reason}") from None
        if min(pixels.rows, pixels.columns) < floor:
            raise MedmetaError(f"{role} image {path}: {pixels.rows} x {pixels.columns} pixels, smaller than the "
                               f"{floor} pixels a side the validation rules allow")
        out[i, 0] = pixels.array.astype(np.float32)
    return out

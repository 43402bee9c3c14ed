"""Synthetic CT and MR pixels: anatomy-like background plus a disease-specific pattern.

Each disease has a fixed pattern of 2-3 components (Gaussian blobs, rings, striped patches)
at its own positions and scales. Like real findings, the pattern is subtle and inconsistent:
every image moves it by several pixels, jitters each component's intensity and size, leaves
a component out now and then, and adds incidental findings that belong to no disease, on top
of varying anatomy and noise. A conv net trained from scratch on five cases per disease does
not reach the ceiling, while features learned across many diseases carry over to new ones.
CT values are in HU, MR values in arbitrary scanner units (0-4095).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medmeta.synth.catalogue import DISEASES

PATTERN_SEED = 20240611  # fixed: the patterns are the same for every cohort seed
KINDS = ("blob", "ring", "stripes")
MAX_SHIFT = 0.10  # of the half-width: about 13 pixels at 256
MODALITY_GAIN = {"CT": 1.0, "MR": 0.9}
COMPONENT_CHANCE = 0.8  # each component of the pattern shows in an image with this chance (one always does)
INCIDENTAL = (0, 3)  # incidental findings per image: from 0 to 2, of any kind, anywhere in the body


@dataclass(frozen=True)
class Component:
    kind: str  # blob | ring | stripes
    x: float  # centre, in [-1, 1] image coordinates
    y: float
    scale: float  # blob sigma, ring radius, patch radius
    amplitude: float  # HU for CT (MR scales it by MODALITY_GAIN)
    angle: float = 0.0  # stripes only


def disease_pattern(index: int) -> tuple[Component, ...]:
    """The fixed pattern of the ``index``-th disease of the catalogue."""
    rng = np.random.default_rng([PATTERN_SEED, index])
    count = 2 + index % 2
    kinds = [KINDS[(index + k) % len(KINDS)] for k in range(count)]
    return tuple(
        Component(kind=kind, x=float(rng.uniform(-0.5, 0.5)), y=float(rng.uniform(-0.4, 0.4)),
                  scale=float(rng.uniform(0.07, 0.16)),
                  amplitude=float(rng.choice([-1, 1]) * rng.uniform(90, 170)),
                  angle=float(rng.uniform(0, np.pi)))
        for kind in kinds
    )


PATTERNS: dict[str, tuple[Component, ...]] = {d.code: disease_pattern(i) for i, d in enumerate(DISEASES)}


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis)


def ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def ct_chest(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An axial chest slice in HU: air, fat, soft tissue, two lungs, heart, spine."""
    scale = rng.uniform(0.96, 1.03)
    image = np.full(x.shape, -1000.0, dtype=np.float32)
    image[ellipse(x, y, 0, 0.02, 0.88 * scale, 0.66 * scale)] = -90.0
    image[ellipse(x, y, 0, 0.02, 0.82 * scale, 0.60 * scale)] = 45.0
    for side in (-1, 1):
        image[ellipse(x, y, side * 0.38 * scale, -0.02, 0.27 * scale, 0.42 * scale)] = -840.0
    image[ellipse(x, y, 0.08, 0.05, 0.2 * scale, 0.17 * scale)] = 38.0
    image[ellipse(x, y, 0, 0.48 * scale, 0.09, 0.08)] = 650.0
    return image


def mr_head(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An axial T1-like head slice: scalp fat, dark skull, grey and white matter, ventricles."""
    scale = rng.uniform(0.96, 1.03)
    image = np.full(x.shape, 8.0, dtype=np.float32)
    image[ellipse(x, y, 0, 0, 0.74 * scale, 0.9 * scale)] = 820.0
    image[ellipse(x, y, 0, 0, 0.70 * scale, 0.86 * scale)] = 90.0
    image[ellipse(x, y, 0, 0, 0.66 * scale, 0.82 * scale)] = 520.0
    image[ellipse(x, y, 0, 0, 0.55 * scale, 0.70 * scale)] = 640.0
    for side in (-1, 1):
        image[ellipse(x, y, side * 0.09, -0.05, 0.05, 0.2 * scale)] = 180.0
    return image


def support(kind: str, scale: float) -> float:
    """How far from its centre a component is visibly non-zero."""
    return 1.3 * scale if kind == "ring" else 3.5 * scale


def window(axis: np.ndarray, centre: float, reach: float) -> slice:
    """The index range of ``axis`` (sorted pixel centres) within ``reach`` of ``centre``."""
    return slice(int(np.searchsorted(axis, centre - reach)), int(np.searchsorted(axis, centre + reach)))


def component_field(kind: str, dx: np.ndarray, dy: np.ndarray, amplitude: float, scale: float,
                    angle: float) -> np.ndarray:
    """A component's values at offsets ``dx``, ``dy`` from its centre."""
    r2 = dx * dx + dy * dy
    if kind == "blob":
        return amplitude * np.exp(-r2 / (2 * scale * scale))
    if kind == "ring":
        width = 0.25 * scale
        return amplitude * np.exp(-((np.sqrt(r2) - scale) ** 2) / (2 * width * width))
    along = dx * np.cos(angle) + dy * np.sin(angle)
    stripes = 0.5 * (1 + np.cos(2 * np.pi * along / (0.45 * scale)))
    return amplitude * stripes * np.exp(-r2 / (2 * scale * scale))


def add_component(image: np.ndarray, c: Component, cx: float, cy: float, amplitude: float, scale: float) -> None:
    """Add one component centred at (cx, cy), computed only where it is not ~0."""
    axis = grid(image.shape[0])[0][0]
    reach = support(c.kind, scale)
    rows, cols = window(axis, cy, reach), window(axis, cx, reach)
    dx = (axis[cols] - cx)[None, :]
    dy = (axis[rows] - cy)[:, None]
    image[rows, cols] += component_field(c.kind, dx, dy, amplitude, scale, c.angle).astype(np.float32)


def add_disease_signal(image: np.ndarray, disease: str, modality: str, rng: np.random.Generator) -> None:
    """Add the disease's pattern (shifted, resized, re-weighted, a component sometimes missing)."""
    pattern = PATTERNS[disease]
    shift_x, shift_y = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
    shown = rng.random(len(pattern)) < COMPONENT_CHANCE
    shown[rng.integers(len(pattern))] = True
    for c, show in zip(pattern, shown):
        amplitude = c.amplitude * MODALITY_GAIN[modality] * rng.uniform(0.7, 1.3)
        scale = c.scale * rng.uniform(0.85, 1.15)
        if show:
            add_component(image, c, c.x + shift_x, c.y + shift_y, amplitude, scale)


def add_incidental_findings(image: np.ndarray, modality: str, rng: np.random.Generator) -> None:
    """Findings that belong to no disease: what a model must learn to ignore."""
    for _ in range(int(rng.integers(*INCIDENTAL))):
        c = Component(kind=KINDS[int(rng.integers(len(KINDS)))], x=float(rng.uniform(-0.55, 0.55)),
                      y=float(rng.uniform(-0.45, 0.45)), scale=float(rng.uniform(0.06, 0.14)),
                      amplitude=float(rng.choice([-1, 1]) * rng.uniform(90, 170)), angle=float(rng.uniform(0, np.pi)))
        add_component(image, c, c.x, c.y, c.amplitude * MODALITY_GAIN[modality], c.scale)


def texture(x, y, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth, low-frequency variation (bias field, partial volume)."""
    fx, fy, phase = rng.uniform(0.5, 2.5), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * np.pi)
    return amplitude * np.sin(np.pi * (fx * x + fy * y) + phase)


def render(modality: str, disease: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size`` x ``size`` slice (float32): HU for CT, scanner units for MR."""
    x, y = grid(size)
    if modality == "CT":
        image = ct_chest(x, y, rng) + texture(x, y, rng, 12.0)
        add_disease_signal(image, disease, modality, rng)
        add_incidental_findings(image, modality, rng)
        image += 18.0 * rng.standard_normal(x.shape, dtype=np.float32)
        return np.clip(image, -1024, 3071)
    image = mr_head(x, y, rng) * rng.uniform(0.85, 1.15) + texture(x, y, rng, 30.0)
    add_disease_signal(image, disease, modality, rng)
    add_incidental_findings(image, modality, rng)
    image += 14.0 * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(image, 0, 4095)

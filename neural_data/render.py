"""A procedural stand-in for the HvM renderer: 64 grayscale "objects" in 8 categories on textured backgrounds.

Each object is a fixed composite of soft-edged ellipses and star-shaped polygons. Objects of a category
share a body plan (the category's base part and part layout) and differ in their own parts, so category
is learnable and object identity is finer. A pose is applied like HvM's: in-plane rotation `rxy`,
out-of-plane rotations `rxz`/`ryz` (foreshortening and shading), translation `ty` (horizontal) and `tz`
(vertical) in units of a quarter image, and scale `s`. Backgrounds are low-contrast gratings plus smooth
noise, one per `background_id`. Shapes and backgrounds are fixed (seeded by object and background index),
so every dataset and training set draws the same identities.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SHAPE_SEED = 20150930  # fixed: object identities must not change with a dataset's seed
BACKGROUND_SEED = 5760
OBJECT_RADIUS = 0.6  # object extent in units of half the image width, at scale s = 1
TRANSLATION_UNIT = 0.5  # ty = 1 moves the object by a quarter of the image width
EDGE_SOFTNESS = 0.03  # soft edges (half the image width = 1) to avoid jagged pixels


@dataclass(frozen=True)
class Part:
    kind: str  # "ellipse" or "polygon"
    center: tuple[float, float]  # object coordinates, object radius ~ 1
    size: tuple[float, float]  # ellipse semi-axes, or polygon mean radius and harmonic amplitude
    angle: float  # radians
    gray: float  # 0..1
    harmonics: tuple[tuple[float, float], ...] = ()  # polygon: (amplitude, phase) for k = 2, 3, ...


def object_parts(category_index: int, object_index: int) -> list[Part]:
    """The parts of one object: its category's body plan plus its own parts (fixed, seed-independent)."""
    plan = np.random.default_rng([SHAPE_SEED, 1000 + category_index])
    own = np.random.default_rng([SHAPE_SEED, category_index, object_index])
    body_aspect = plan.uniform(0.35, 1.0)
    body_kind = "ellipse" if category_index % 2 == 0 else "polygon"
    parts = [_part(body_kind, (0.0, 0.0), (0.75, 0.75 * body_aspect), plan.uniform(0, np.pi),
                   own.uniform(0.55, 0.95), plan, own, jitter=0.12)]
    for _ in range(2):  # parts shared by the category, positions jittered per object
        center = plan.uniform(-0.55, 0.55, size=2) + own.normal(0, 0.08, size=2)
        kind = "ellipse" if plan.uniform() < 0.5 else "polygon"
        parts.append(_part(kind, tuple(center), tuple(plan.uniform(0.15, 0.4, size=2)), plan.uniform(0, np.pi),
                           own.uniform(0.1, 0.9), plan, own, jitter=0.2))
    for _ in range(int(own.integers(2, 4))):  # parts of this object only
        kind = "ellipse" if own.uniform() < 0.5 else "polygon"
        parts.append(_part(kind, tuple(own.uniform(-0.6, 0.6, size=2)), tuple(own.uniform(0.08, 0.3, size=2)),
                           own.uniform(0, np.pi), own.uniform(0.0, 1.0), own, own, jitter=0.0))
    return parts


def _part(kind, center, size, angle, gray, shape_rng, jitter_rng, jitter: float) -> Part:
    size = tuple(float(s * (1 + jitter_rng.uniform(-jitter, jitter))) for s in size)
    harmonics = ()
    if kind == "polygon":
        harmonics = tuple((float(shape_rng.uniform(0.05, 0.3)), float(shape_rng.uniform(0, 2 * np.pi)))
                          for _ in range(3))
    return Part(kind, (float(center[0]), float(center[1])), size, float(angle), float(gray), harmonics)


def _part_alpha(part: Part, u: np.ndarray, v: np.ndarray, softness: float) -> np.ndarray:
    """Coverage (0..1) of a part at object coordinates (u, v)."""
    du, dv = u - part.center[0], v - part.center[1]
    cos, sin = np.cos(part.angle), np.sin(part.angle)
    a, b = du * cos + dv * sin, -du * sin + dv * cos
    if part.kind == "ellipse":
        # approximate signed distance: (normalised radius - 1) scaled by the smaller semi-axis
        radius = np.sqrt((a / part.size[0]) ** 2 + (b / part.size[1]) ** 2)
        distance = (radius - 1.0) * min(part.size)
    else:
        phi = np.arctan2(b, a)
        boundary = np.full_like(phi, part.size[0])
        for k, (amplitude, phase) in enumerate(part.harmonics, start=2):
            boundary = boundary + part.size[0] * amplitude * np.cos(k * phi + phase)
        distance = np.hypot(a, b) - boundary
    return 1.0 / (1.0 + np.exp(np.clip(distance / softness, -50, 50)))


def background(background_id: int, size: int) -> np.ndarray:
    """(size, size) float image in 0..1: a low-contrast grating plus smooth noise, fixed per id."""
    rng = np.random.default_rng([BACKGROUND_SEED, int(background_id)])
    coarse = rng.normal(0.0, 1.0, size=(8, 8)).astype(np.float32)
    noise = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float64)
    y, x = np.mgrid[0:size, 0:size] / size
    theta, frequency, phase = rng.uniform(0, np.pi), rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
    grating = np.sin(2 * np.pi * frequency * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    mean = rng.uniform(0.3, 0.6)
    return np.clip(mean + 0.08 * grating + 0.07 * noise, 0.0, 1.0)


def render(parts: list[Part], pose: dict, background_image: np.ndarray) -> np.ndarray:
    """Composite one posed object over a background; returns (size, size) uint8.

    pose: rxy, rxz, ryz (degrees), ty, tz (quarter image widths), s (scale).
    """
    size = background_image.shape[0]
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
    x, y = np.meshgrid(coords, -coords)  # y up
    x = x - pose["ty"] * TRANSLATION_UNIT
    y = y - pose["tz"] * TRANSLATION_UNIT
    angle = np.deg2rad(pose["rxy"])
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = x * cos + y * sin, -x * sin + y * cos
    # Out-of-plane rotation foreshortens (never below 25 %) and mirrors past 90 degrees.
    squash_u = np.cos(np.deg2rad(pose["ryz"]))
    squash_v = np.cos(np.deg2rad(pose["rxz"]))
    u = u / (np.sign(squash_u or 1.0) * max(abs(squash_u), 0.25))
    v = v / (np.sign(squash_v or 1.0) * max(abs(squash_v), 0.25))
    extent = OBJECT_RADIUS * pose["s"]
    u, v = u / extent, v / extent
    softness = max(EDGE_SOFTNESS, 2.0 / size) / extent
    shade = 0.15 * np.sin(np.deg2rad(pose["rxz"])) + 0.1 * np.sin(np.deg2rad(pose["ryz"]))
    image = background_image.copy()
    for part in parts:
        alpha = _part_alpha(part, u, v, softness)
        gray = np.clip(part.gray + shade * (part.center[0] - part.center[1]), 0.0, 1.0)
        image = image * (1.0 - alpha) + gray * alpha
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


class Renderer:
    """Renders HvM-like images for (object, pose, background) rows; object shapes are built once."""

    def __init__(self, categories: list[str], objects_by_category: dict[str, list[str]], image_size: int):
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        self.image_size = int(image_size)
        self.categories = list(categories)
        self._parts: dict[str, list[Part]] = {}
        for category_index, category in enumerate(self.categories):
            for object_index, name in enumerate(objects_by_category[category]):
                self._parts[name] = object_parts(category_index, object_index)

    def __call__(self, object_name: str, pose: dict, background_id: int) -> np.ndarray:
        if object_name not in self._parts:
            raise KeyError(f"unknown object '{object_name}'")
        return render(self._parts[object_name], pose, background(int(background_id), self.image_size))

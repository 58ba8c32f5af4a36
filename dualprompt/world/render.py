"""Deterministic renderer of the world: one coloured shape on a background, in one image style.

`render(colour, shape, style, rng, variation)` draws only from `rng`, so the same generator state gives
the same image. Shapes are drawn as a mask at twice the output size and box-downsampled (anti-aliasing),
then composited over a tinted, shaded background; the style is applied last. `variation` shifts the
distribution a dataset is drawn from (size, background, colour jitter, extra noise and fading); the
default is the distribution of pretraining.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dualprompt.world.vocab import COLOURS, SHAPES, STYLES

IMAGE_SIZE = 32
_SUPERSAMPLE = 2
_CANVAS = IMAGE_SIZE * _SUPERSAMPLE

Polygon = list[tuple[float, float]]  # unit coordinates, shape centred at (0, 0), radius ~1


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> Polygon:
    angles = [phase + 2 * math.pi * k / n for k in range(n)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _star() -> Polygon:
    return [
        ((1.0 if k % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + math.pi * k / 5),
         (1.0 if k % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + math.pi * k / 5))
        for k in range(10)
    ]


def _heart() -> Polygon:
    points = []
    for k in range(40):
        t = 2 * math.pi * k / 40
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((x / 17, -(y + 2.5) / 17))  # image y points down
    return points


_CIRCLE = _regular(32)
_CROSS = [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1),
          (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)]
_HOURGLASS = [(-0.8, -1), (0.8, -1), (0.12, 0), (0.8, 1), (-0.8, 1), (-0.12, 0)]
_ARROW = [(-1, -0.28), (0.15, -0.28), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.28), (-1, 0.28)]

# Shape -> mask operations in drawing order: (polygon, fill). Fill 0 cuts a hole (ring, moon).
SHAPE_OPS: dict[str, list[tuple[Polygon, int]]] = {
    "circle": [(_CIRCLE, 255)],
    "square": [(_regular(4, 1.2, -math.pi / 4), 255)],
    "triangle": [([(x, y + 0.15) for x, y in _regular(3, 1.1)], 255)],
    "star": [(_star(), 255)],
    "cross": [(_CROSS, 255)],
    "diamond": [([(0, -1.05), (0.6, 0), (0, 1.05), (-0.6, 0)], 255)],
    "ring": [(_CIRCLE, 255), (_regular(32, 0.55), 0)],
    "arrow": [(_ARROW, 255)],
    "moon": [(_CIRCLE, 255), ([(x + 0.5, y - 0.2) for x, y in _regular(32, 0.85)], 0)],
    "heart": [(_heart(), 255)],
    "hexagon": [(_regular(6, 1.05, 0.0), 255)],
    "hourglass": [(_HOURGLASS, 255)],
}
assert set(SHAPE_OPS) == set(SHAPES), "every shape of the vocabulary needs a drawing"


@dataclass(frozen=True)
class Variation:
    """The image distribution around a style. Ranges are (low, high) of a uniform draw per image.

    scale: shape radius as a fraction of the image side; background: grey level of the background
    (non-sketch styles); colour_jitter: +- per channel around the colour's RGB; noise: extra Gaussian
    pixel noise std on top of the style's own (None: none); fade: extra pull of every pixel towards
    light grey, 0 = none, 1 = blank (None: none); severity: strength of the style's own corruption, as
    ImageNet-C's severities: 1 = pretraining's, 0 = none (a photo with the style's name); it scales the
    noise std, the fade, the blur radius and the pixel block size, and fills a sketch's interior with
    opacity 1 - severity. The random draws do not depend on it.
    """

    scale: tuple[float, float] = (0.17, 0.33)
    background: tuple[float, float] = (100.0, 225.0)
    colour_jitter: float = 15.0
    noise: tuple[float, float] | None = None
    fade: tuple[float, float] | None = None
    severity: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"Variation.severity must lie in [0, 1], got {self.severity}.")


PRETRAINING = Variation()  # the distribution pretraining draws from (datasets change only the severity)


def shape_mask(shape: str, rng: np.random.Generator, scale: tuple[float, float] = PRETRAINING.scale) -> np.ndarray:
    """Coverage mask of `shape` at a random position, scale and rotation.

    Returns:
        float32 [IMAGE_SIZE, IMAGE_SIZE] in [0, 1]; 1 = inside the shape.
    """
    radius = rng.uniform(*scale) * _CANVAS  # shape radius in canvas pixels
    margin = radius * 0.8  # the shape may touch the border, never leave the frame
    cx, cy = rng.uniform(margin, _CANVAS - margin, size=2)
    angle = rng.uniform(-0.5, 0.5)  # radians; small enough that a square never becomes a diamond
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon, fill in SHAPE_OPS[shape]:
        points = [(cx + radius * (x * cos_a - y * sin_a), cy + radius * (x * sin_a + y * cos_a)) for x, y in polygon]
        draw.polygon(points, fill=fill)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A light-to-mid grey background with a small colour tint and a linear shading gradient.

    Returns:
        float32 [IMAGE_SIZE, IMAGE_SIZE, 3] in 0..255.
    """
    base = rng.uniform(low, high) + rng.uniform(-12, 12, size=3)  # [3]
    ramp = np.linspace(-1.0, 1.0, IMAGE_SIZE, dtype=np.float32)
    gx, gy = rng.uniform(-15, 15, size=2)
    shading = gx * ramp[None, :] + gy * ramp[:, None]  # [H, W]
    return (base[None, None, :] + shading[:, :, None]).astype(np.float32)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The 1-2 px border of a coverage mask (mask minus its erosion), float32 [H, W] in [0, 1]."""
    image = Image.fromarray((mask * 255).astype(np.uint8))
    eroded = np.asarray(image.filter(ImageFilter.MinFilter(3)), dtype=np.float32) / 255.0
    return np.clip(mask - eroded, 0.0, 1.0) * 1.6


def _to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="RGB")


def render(
    colour: str, shape: str, style: str, rng: np.random.Generator, variation: Variation = PRETRAINING,
) -> Image.Image:
    """Render one 32x32 RGB image of a `colour` `shape` in `style`, drawing all randomness from `rng`."""
    if colour not in COLOURS or shape not in SHAPES or style not in STYLES:
        raise ValueError(
            f"Unknown colour, shape or style ({colour!r}, {shape!r}, {style!r}); see dualprompt.world.vocab."
        )
    jitter = variation.colour_jitter
    rgb = np.asarray(COLOURS[colour], dtype=np.float32) + rng.uniform(-jitter, jitter, size=3)  # [3]
    mask = shape_mask(shape, rng, variation.scale)  # [H, W]
    if style == "sketch":
        # A line drawing on light paper: only the outline, in the shape's colour.
        background = _background(rng, 220, 245)
        outline = np.clip(_outline(mask), 0.0, 1.0)
        alpha = np.maximum(outline, mask * (1.0 - variation.severity))[:, :, None]
    else:
        background = _background(rng, *variation.background)
        alpha = mask[:, :, None]
    pixels = background * (1.0 - alpha) + rgb[None, None, :] * alpha  # [H, W, 3]
    return _apply_style(pixels, style, rng, variation)


def _apply_style(pixels: np.ndarray, style: str, rng: np.random.Generator, variation: Variation) -> Image.Image:
    """Apply the image-level corruption of `style` (and the variation's extras) to float pixels [H, W, 3]."""
    severity = variation.severity
    noise_std = {"noisy": max(3.0, severity * rng.uniform(22, 38))}.get(style, 3.0)
    if variation.noise is not None:
        noise_std = math.hypot(noise_std, rng.uniform(*variation.noise))
    pixels = pixels + rng.normal(0.0, noise_std, size=pixels.shape).astype(np.float32)
    if style == "faded":
        # Low contrast: pull everything towards a light grey.
        amount = severity * rng.uniform(0.5, 0.65)
        pixels = pixels * (1.0 - amount) + 210.0 * amount
    if variation.fade is not None:
        amount = rng.uniform(*variation.fade)
        pixels = pixels * (1.0 - amount) + 210.0 * amount
    image = _to_image(pixels)
    if style == "blurry":
        image = image.filter(ImageFilter.GaussianBlur(radius=severity * float(rng.uniform(1.4, 2.0))))
    elif style == "pixelated":
        # Blocks per side; a milder severity makes the blocks smaller (severity 0: one per pixel).
        blocks = min(IMAGE_SIZE, round(int(rng.integers(7, 10)) / max(severity, 1e-6)))
        image = image.resize((blocks, blocks), Image.Resampling.BOX)
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
    return image

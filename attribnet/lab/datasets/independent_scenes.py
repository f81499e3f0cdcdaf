"""The second zoo's real-image model: overlapping random polygons carrying octave-noise texture.

Written apart from `zoo.py`'s dead leaves: a scene is a background and 20-50 polygons (ellipses,
squares, flowers) whose sizes follow p(r) ~ r^-2.5, drawn largest first, so the image has detail at
every scale; each region carries one of three texture fields grown by a pyramid (double the grid,
smooth, add fresh noise; amplitude ~ 1/f), under a smooth illumination ramp. Scenes are drawn 2x
supersampled (label map with Pillow, then box-averaged), get a little sensor noise, and then either
an optical blur (a real image) or a 2x area reduction (a generator's input). The blur (sigma
0.65-0.95 px) was chosen by matching the mean log-DCT spectrum of reals to that of x2 bicubic
upsampled scenes band by band (sigma 0.8 matched within 0.3 nats in every band at 64 px): reals keep
no more fine detail than fakes, otherwise a detector would only learn "missing fine detail".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

SUPERSAMPLE = 2
TEXTURE_FIELDS = 3
VERTICES = 24  # every outline is a 24-gon: ellipse, square or flower depending on its radius profile


@dataclass(frozen=True)
class SceneModel:
    """What a scene is drawn from; written verbatim into the manifest."""

    shapes: tuple[int, int] = (20, 50)
    radius_fraction: tuple[float, float] = (0.04, 0.6)  # of the image side
    radius_exponent: float = 2.5  # p(r) ~ r^-exponent
    texture_exponent: float = 1.0  # texture amplitude ~ 1/f^exponent
    texture_gain: tuple[float, float] = (0.1, 0.6)
    illumination: float = 0.4  # largest brightness change across the image
    sensor_noise: tuple[float, float] = (0.002, 0.008)  # std, in [0, 1] units
    blur_sigma: tuple[float, float] = (0.65, 0.95)  # optical blur, px: matches a x2 bicubic upsampling


def _double(fields: np.ndarray) -> np.ndarray:
    """(k, n, n) -> (k, 2n, 2n): pixel repetition smoothed by a [1, 2, 1] / 4 filter on each axis."""
    big = fields.repeat(2, axis=1).repeat(2, axis=2)
    smooth = big * 0.5
    smooth[:, 1:] += 0.25 * big[:, :-1]
    smooth[:, :-1] += 0.25 * big[:, 1:]
    smooth[:, 0] += 0.25 * big[:, 0]
    smooth[:, -1] += 0.25 * big[:, -1]
    out = smooth * 0.5
    out[:, :, 1:] += 0.25 * smooth[:, :, :-1]
    out[:, :, :-1] += 0.25 * smooth[:, :, 1:]
    out[:, :, 0] += 0.25 * smooth[:, :, 0]
    out[:, :, -1] += 0.25 * smooth[:, :, -1]
    return out


def octave_textures(rng: np.random.Generator, count: int, side: int, exponent: float) -> np.ndarray:
    """`count` (side, side) fields with unit std: a pyramid that doubles a 4x4 random grid and adds
    fresh noise at each level, each level's noise 2^-exponent times the previous (amplitude ~ 1/f)."""
    size, amplitude = 4, 1.0
    fields = rng.standard_normal((count, size, size), dtype=np.float32)
    while size < side:
        size *= 2
        amplitude *= 2.0**-exponent
        fields = _double(fields) + amplitude * rng.standard_normal((count, size, size), dtype=np.float32)
    fields = fields[:, :side, :side]
    return fields / np.maximum(fields.std(axis=(1, 2), keepdims=True), 1e-6)


def _outlines(rng: np.random.Generator, count: int, side: int, model: SceneModel) -> np.ndarray:
    """(count, VERTICES, 2) polygon vertices: power-law radii, random centres, aspects and turns."""
    low, high = (f * side for f in model.radius_fraction)
    power = 1 - model.radius_exponent
    radius = (low**power + rng.uniform(size=count) * (high**power - low**power)) ** (1 / power)  # inverse CDF
    angles = np.linspace(0, 2 * np.pi, VERTICES, endpoint=False)
    kind = rng.integers(3, size=count)[:, None]
    square = 1 / np.maximum(np.abs(np.cos(angles)), np.abs(np.sin(angles)))
    petals = rng.integers(3, 7, count)[:, None]
    flower = 1 + rng.uniform(0.2, 0.5, count)[:, None] * np.cos(petals * angles + rng.uniform(0, 6.3, count)[:, None])
    profile = np.where(kind == 0, 1.0, np.where(kind == 1, square, flower)) * radius[:, None]
    x, y = profile * np.cos(angles), profile * np.sin(angles) * rng.uniform(0.4, 1.0, count)[:, None]
    turn = rng.uniform(0, np.pi, count)[:, None]
    centre = rng.uniform(-0.1 * side, 1.1 * side, (count, 2))
    xs = centre[:, :1] + x * np.cos(turn) - y * np.sin(turn)
    ys = centre[:, 1:] + x * np.sin(turn) + y * np.cos(turn)
    return np.stack([xs, ys], axis=-1)


def _label_map(rng: np.random.Generator, side: int, model: SceneModel) -> tuple[np.ndarray, int]:
    """(side, side) uint8 labels: 0 the background, 1..n the polygons, largest drawn first so the
    small ones stay visible on top."""
    count = int(rng.integers(model.shapes[0], model.shapes[1] + 1))
    outlines = _outlines(rng, count, side, model)
    extent = np.ptp(outlines[:, :, 0], axis=1)
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for label, index in enumerate(np.argsort(-extent), start=1):
        draw.polygon([tuple(p) for p in outlines[index].tolist()], fill=label)
    return np.asarray(canvas), count


def scene(rng: np.random.Generator, size: int, model: SceneModel) -> np.ndarray:
    """A sharp (size, size, 3) float32 scene in [0, 1] with sensor noise."""
    side = size * SUPERSAMPLE
    labels, count = _label_map(rng, side, model)
    # Textures are grown at the output size and repeated: the supersampling only anti-aliases edges.
    fields = octave_textures(rng, TEXTURE_FIELDS, size, model.texture_exponent).repeat(SUPERSAMPLE, 1).repeat(SUPERSAMPLE, 2)
    # Per region: colour (3), tint of its texture (3), texture gain (1), which texture field (1).
    table = np.concatenate([
        rng.uniform(0.05, 0.95, (count + 1, 3)),
        0.5 + rng.uniform(0.0, 1.0, (count + 1, 3)),
        0.25 * rng.uniform(*model.texture_gain, (count + 1, 1)),
        rng.integers(TEXTURE_FIELDS, size=(count + 1, 1)),
    ], axis=1).astype(np.float32)[labels]
    texture = np.choose(table[..., 7].astype(np.intp), fields)
    image = table[..., :3] + (table[..., 6] * texture)[..., None] * table[..., 3:6]
    turn = rng.uniform(0, 2 * np.pi)
    steps = np.linspace(-0.5, 0.5, side, dtype=np.float32)
    ramp = np.float32(np.cos(turn)) * steps[None, :] + np.float32(np.sin(turn)) * steps[:, None]
    image *= (1 + np.float32(rng.uniform(0, model.illumination)) * ramp)[..., None]
    image = _reduce(image, SUPERSAMPLE)
    image += rng.normal(0.0, rng.uniform(*model.sensor_noise), image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Area reduction by an integer factor (strided sums: faster than a mean over reshaped axes)."""
    total = sum(image[dy::factor, dx::factor] for dy in range(factor) for dx in range(factor))
    return total / np.float32(factor * factor)


def optical_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel (reflected borders)."""
    return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect").astype(np.float32)


def real_image(rng: np.random.Generator, size: int, model: SceneModel) -> np.ndarray:
    """A real image: a scene seen through optics of a random blur in `model.blur_sigma`."""
    picture = scene(rng, size, model)
    return optical_blur(picture, rng.uniform(*model.blur_sigma))


def generator_input(rng: np.random.Generator, size: int, model: SceneModel) -> np.ndarray:
    """A generator's (size / 2)-px input: a scene reduced 2x by area averaging."""
    return _reduce(scene(rng, size, model), 2)

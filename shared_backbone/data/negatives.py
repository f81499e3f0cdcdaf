"""Negatives a node makes itself: images it is allowed to see, re-rendered by random upsamplers.

A node may train only on its own generator's images and the coordinator's reference set, so its
head never sees another organisation's fingerprint and tends to accept any fake. Like POSE
(Yang et al., CVPR 2023), which simulates the open space with randomly initialised networks, the
node re-renders reference reals and its own images through freshly seeded upsampling networks of
the common families (transposed conv, nearest + conv, bilinear + conv, pixel shuffle): each
halves the image (area) and upsamples it again with weights near an interpolation kernel plus a
random deviation, so every image carries a fingerprint that is not the node's own. Every
network is seeded from the node's own seed and a name no source uses, so no negative reproduces
another source's generator; the families are generic knowledge, not anyone's data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared_backbone.data.zoo import Generator, make_generator

FAMILIES = ("tconv", "nnconv", "bilinear", "pixshuffle")
NAME_TAG = "negative"  # generator names are FAMILY_negativeSEED-I: never a zoo source name


@dataclass(frozen=True)
class NegativeSettings:
    """How many negatives, from how many networks, and how far their weights stray from interpolation."""

    count: int = 1200
    generators: int = 12
    strength: tuple[float, float] = (0.003, 0.05)  # log-uniform per network
    seed: int = 0
    families: tuple[str, ...] = FAMILIES

    def __post_init__(self) -> None:
        if self.count < 0 or self.generators < 1:
            raise ValueError(f"negatives: count must be >= 0 and generators >= 1 (got {self.count}, {self.generators})")
        if not 0 < self.strength[0] <= self.strength[1]:
            raise ValueError(f"negatives: strength must be an increasing positive range, got {list(self.strength)}")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"negatives: families must be some of {FAMILIES}, got {list(self.families)}")


def negative_generators(settings: NegativeSettings) -> list[Generator]:
    """The node's fixed set of random upsamplers, families in turn, each with its own strength."""
    rng = np.random.default_rng([settings.seed, 7])
    low, high = np.log(settings.strength[0]), np.log(settings.strength[1])
    generators = []
    for i in range(settings.generators):
        family = settings.families[i % len(settings.families)]
        strength = float(np.exp(rng.uniform(low, high)))
        generators.append(make_generator(f"{family}_{NAME_TAG}{settings.seed}-{i}", settings.seed, strength))
    return generators


def _area_half(rgb: np.ndarray) -> np.ndarray:
    h, w, _ = rgb.shape
    cropped = rgb[: h - h % 2, : w - w % 2].astype(np.float64) / 255.0
    return cropped.reshape(cropped.shape[0] // 2, 2, cropped.shape[1] // 2, 2, 3).mean(axis=(1, 3))


def render_negative(rgb: np.ndarray, generator: Generator) -> np.ndarray:
    """One uint8 image at the input's size: halved (area) and upsampled again by `generator`."""
    out = generator(_area_half(rgb))
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def make_negatives(images: Sequence[np.ndarray], settings: NegativeSettings, count: int | None = None) -> list[np.ndarray]:
    """`count` (default settings.count) negatives from `images` (uint8 HxWx3, even sides), deterministic.

    Image i is drawn from `images` and network i % generators renders it, so every network makes
    about the same number of negatives and every source image is used about equally often.
    """
    count = settings.count if count is None else count
    if count and not images:
        raise ValueError("negatives: no source images to re-render (reference reals or own images)")
    generators = negative_generators(settings)
    rng = np.random.default_rng([settings.seed, 11, count])
    picks = rng.permutation(np.resize(np.arange(len(images)), count)) if count else []
    return [render_negative(images[int(pick)], generators[i % len(generators)]) for i, pick in enumerate(picks)]

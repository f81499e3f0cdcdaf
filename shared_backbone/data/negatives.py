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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft

from attribnet.lab.datasets.zoo import Generator, make_generator

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
    resampling_blur: float = 1.0  # px^2 of blur that halving + re-upsampling adds; pre-compensated

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


MAX_SHARPENING_GAIN = 4.0
BLUR_CANDIDATES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)  # px^2
MATCH_SAMPLE = 64
RADIAL_BINS = 8
MATCHED_BINS = slice(1, 4)  # the low and middle frequencies: the image's bandwidth, not its fingerprint


def _area_half(rgb: np.ndarray) -> np.ndarray:
    h, w, _ = rgb.shape
    cropped = rgb[: h - h % 2, : w - w % 2].astype(np.float64) / 255.0
    return cropped.reshape(cropped.shape[0] // 2, 2, cropped.shape[1] // 2, 2, 3).mean(axis=(1, 3))


def _unblur(low: np.ndarray, variance: float) -> np.ndarray:
    """Undoes a Gaussian blur of `variance` (in full-resolution pixels squared) on a half-size image,
    gain capped: a re-rendered image then keeps the bandwidth of the image it came from, so a head
    cannot reject negatives for being blurrier than its own images (a cue no real generator shares)."""
    if variance <= 0:
        return low
    fy = np.fft.fftfreq(low.shape[0])[:, None] / 2.0  # cycles per full-resolution pixel
    fx = np.fft.fftfreq(low.shape[1])[None, :] / 2.0
    gain = np.minimum(np.exp(2 * np.pi**2 * (fy**2 + fx**2) * variance), MAX_SHARPENING_GAIN)
    spectrum = np.fft.fft2(low, axes=(0, 1)) * gain[..., None]
    return np.real(np.fft.ifft2(spectrum, axes=(0, 1)))


def render_negative(rgb: np.ndarray, generator: Generator, resampling_blur: float = 0.0) -> np.ndarray:
    """One uint8 image at the input's size: halved (area) and upsampled again by `generator`."""
    out = generator(_unblur(_area_half(rgb), resampling_blur))
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
    return [render_negative(images[int(pick)], generators[i % len(generators)], settings.resampling_blur)
            for i, pick in enumerate(picks)]


def radial_log_power(images: Sequence[np.ndarray]) -> np.ndarray:
    """Mean DCT power of greyscale images in RADIAL_BINS rings of frequency, log10."""
    size = images[0].shape[0]
    fy, fx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    rings = np.minimum((np.sqrt(fy**2 + fx**2) / size * RADIAL_BINS / np.sqrt(2)).astype(int), RADIAL_BINS - 1)
    total = np.zeros(RADIAL_BINS)
    for rgb in images:
        grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        total += np.bincount(rings.ravel(), weights=(scipy.fft.dctn(grey, norm="ortho") ** 2).ravel(), minlength=RADIAL_BINS)
    return np.log10(total / len(images) + 1e-12)


def matched_settings(own: Sequence[np.ndarray], settings: NegativeSettings) -> NegativeSettings:
    """`settings` with the resampling pre-compensation whose negatives best match the bandwidth
    (low and middle frequencies) of the node's own images: measured on its own images only."""
    if not own:
        return settings
    sample = list(own[:MATCH_SAMPLE])
    target = radial_log_power(sample)[MATCHED_BINS]

    def mismatch(variance: float) -> float:
        trial = dataclasses.replace(settings, resampling_blur=variance)
        return float(np.abs(radial_log_power(make_negatives(sample, trial, len(sample)))[MATCHED_BINS] - target).sum())

    return dataclasses.replace(settings, resampling_blur=min(BLUR_CANDIDATES, key=mismatch))

"""Negatives a node makes itself: images it is allowed to see, re-rendered by random upsamplers.

A node may train only on its own generator's images and the coordinator's reference set, so its
head never sees another organisation's fingerprint and tends to accept any fake. Like POSE
(Yang et al., CVPR 2023), which simulates the open space with randomly initialised networks, the
node re-renders reference reals and its own images through `generators` freshly seeded networks
of `shared_backbone.data.negative_space` (learned-upsampler families and classical resamplers,
each with random depth, width, kernels, activation, normalisation, noise, skip path and
re-encoding): each network reduces the image (area) by its own factor, 2 or 4, and upsamples it
again close to an interpolation kernel, so every image carries a weak fingerprint that is not the
node's own. That space shares no code with any benchmark generator, and the node's source name is
mixed into its seed (`node.train_head.negative_settings`), so two nodes render different networks.
Rendering, the node-facing API and bandwidth matching live here; the networks in `negative_space`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft

from shared_backbone.data.negative_space import FAMILIES, Network, draw_network, reencode

NAME_TAG = "negative"  # network names are FAMILY_negativeSEED-I: never a source name


def _unknown_families(names: Sequence[str]) -> list[str]:
    return sorted(set(names) - set(FAMILIES))


@dataclass(frozen=True)
class NegativeSettings:
    """How many negatives, from how many networks of which families, and how far their weights stray
    from interpolation (a fraction of each weight tensor's RMS, log-uniform per network)."""

    count: int = 1200
    generators: int = 12
    strength: tuple[float, float] = (0.003, 0.05)
    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    exclude_families: tuple[str, ...] = ()  # e.g. a benchmark's left-out family
    resampling_blur: float = 1.0  # px^2 of blur that reducing + re-upsampling by 2 adds; pre-compensated

    def __post_init__(self) -> None:
        if self.count < 0 or self.generators < 1:
            raise ValueError(f"negatives: count must be >= 0 and generators >= 1 (got {self.count}, {self.generators})")
        if len(self.strength) != 2 or not 0 < self.strength[0] <= self.strength[1]:
            raise ValueError(f"negatives: strength must be an increasing positive range, got {list(self.strength)}")
        for key in ("families", "exclude_families"):
            if _unknown_families(getattr(self, key)):
                raise ValueError(f"negatives: {key} has unknown {_unknown_families(getattr(self, key))} (known: {', '.join(FAMILIES)})")
        if not self.drawn_families:
            raise ValueError(f"negatives: no family left to draw (families {list(self.families)}, excluded {list(self.exclude_families)})")

    @property
    def drawn_families(self) -> tuple[str, ...]:
        return tuple(f for f in dict.fromkeys(self.families) if f not in self.exclude_families)


def negative_networks(settings: NegativeSettings) -> list[Network]:
    """The node's fixed set of random networks, drawn families in turn, each with its own strength."""
    rng = np.random.default_rng([settings.seed, 7])
    low, high = np.log(settings.strength[0]), np.log(settings.strength[1])
    families = settings.drawn_families
    networks = []
    for i in range(settings.generators):
        family = families[i % len(families)]
        strength = float(np.exp(rng.uniform(low, high)))
        network_rng = np.random.default_rng([settings.seed, 17, i])
        networks.append(draw_network(family, strength, network_rng, f"{family}_{NAME_TAG}{settings.seed}-{i}"))
    return networks


MAX_SHARPENING_GAIN = 4.0
BLUR_CANDIDATES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)  # px^2
MATCH_SAMPLE = 64
RADIAL_BINS = 8
MATCHED_BINS = slice(1, 4)  # the low and middle frequencies: the image's bandwidth, not its fingerprint


def _area_reduce(images: np.ndarray, factor: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H/factor, W/factor, 3) floats in [0, 1]: box average (sides a multiple of factor)."""
    n, h, w, _ = images.shape
    x = images.astype(np.float32) / 255.0
    return x.reshape(n, h // factor, factor, w // factor, factor, 3).mean(axis=(2, 4))


def _unblur(low: np.ndarray, variance: float, factor: int) -> np.ndarray:
    """Undoes a Gaussian blur of `variance` (in full-resolution pixels squared) on reduced images,
    gain capped: a re-rendered image then keeps the bandwidth of the image it came from, so a head
    cannot reject negatives for being blurrier than its own images (a cue no real generator shares)."""
    if variance <= 0:
        return low
    fy = np.fft.fftfreq(low.shape[1])[:, None] / factor  # cycles per full-resolution pixel
    fx = np.fft.fftfreq(low.shape[2])[None, :] / factor
    gain = np.minimum(np.exp(2 * np.pi**2 * (fy**2 + fx**2) * variance), MAX_SHARPENING_GAIN)
    spectrum = np.fft.fft2(low, axes=(1, 2)) * gain[None, :, :, None]
    return np.real(np.fft.ifft2(spectrum, axes=(1, 2))).astype(np.float32)


def render_negatives(images: np.ndarray, network: Network, rng: np.random.Generator, resampling_blur: float = 0.0) -> np.ndarray:
    """(N, H, W, 3) uint8 -> the same shape, each image reduced by the network's factor and
    upsampled again by it. Sides that are not a multiple of the factor are cropped and the
    render edge-padded back; the pre-compensated blur grows with the factor squared."""
    factor = network.factor
    n, h, w, _ = images.shape
    hc, wc = h - h % factor, w - w % factor
    if hc < 2 * factor or wc < 2 * factor:
        raise ValueError(f"negatives: images of {h}x{w} px are too small for network {network.name} (factor {factor})")
    low = _unblur(_area_reduce(images[:, :hc, :wc], factor), resampling_blur * (factor / 2) ** 2, factor)
    out = np.clip(np.round(network(low, rng) * 255.0), 0, 255).astype(np.uint8)
    out = np.pad(out, ((0, 0), (0, h - hc), (0, w - wc), (0, 0)), mode="edge")
    if network.reencode:
        out = np.stack([reencode(image, network.reencode) for image in out])
    return out


def make_negatives(images: Sequence[np.ndarray], settings: NegativeSettings, count: int | None = None) -> list[np.ndarray]:
    """`count` (default settings.count) negatives from `images` (uint8 HxWx3, one size), deterministic.

    Image i is drawn from `images` and network i % generators renders it, so every network makes
    about the same number of negatives and every source image is used about equally often.
    """
    count = settings.count if count is None else count
    if not count:
        return []
    if not images:
        raise ValueError("negatives: no source images to re-render (reference reals or own images)")
    shapes = {np.shape(image) for image in images}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
        raise ValueError(f"negatives: source images must be HxWx3 of one size, got shapes {sorted(shapes)[:3]}")
    networks = negative_networks(settings)
    picks = np.random.default_rng([settings.seed, 11, count]).permutation(np.resize(np.arange(len(images)), count))
    out: list[np.ndarray | None] = [None] * count
    for index, network in enumerate(networks):
        slots = np.arange(index, count, len(networks))
        if not slots.size:
            continue
        batch = np.stack([np.asarray(images[int(picks[i])], dtype=np.uint8) for i in slots])
        rendered = render_negatives(batch, network, np.random.default_rng([settings.seed, 13, count, index]), settings.resampling_blur)
        for slot, image in zip(slots, rendered):
            out[slot] = image
    return out


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

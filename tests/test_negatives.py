"""The negatives a node makes itself: deterministic, broad, faithful like an upsampler, and fingerprinted.

Source images are 1/f colour noise made here (no benchmark code), 32 px so every test takes seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.fft
from PIL import Image

from node.config import NegativesConfig, NodeConfig
from node.train_head import negative_settings
from shared_backbone.config import ConfigError, build
from shared_backbone.data.negative_space import FAMILIES, ClassicalStage, Stage
from shared_backbone.data.negatives import NegativeSettings, make_negatives, matched_settings, negative_networks, render_negatives

SIZE = 32


def natural_images(count: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """(count, size, size, 3) uint8 with a 1/f^1.5 amplitude spectrum: smooth, photo-like content."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    radius = np.maximum(np.hypot(f[:, None], f[None, :]), 1.0 / size)
    spectrum = (rng.standard_normal((count, size, size, 3)) + 1j * rng.standard_normal((count, size, size, 3))) / radius[..., None] ** 1.5
    x = np.real(np.fft.ifft2(spectrum, axes=(1, 2)))
    x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True) * 0.18 + 0.5
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a.astype(float) - b.astype(float)) ** 2), 1e-12)))


def one_family(family: str, **changes) -> NegativeSettings:
    return NegativeSettings(**{"count": 24, "generators": 4, "families": (family,), "seed": 3, **changes})


def test_negatives_are_deterministic_per_seed_and_seeds_differ():
    images = list(natural_images(12))
    settings = NegativeSettings(count=36, generators=12, seed=5)
    first, again = make_negatives(images, settings), make_negatives(images, settings)
    other = make_negatives(images, dataclasses.replace(settings, seed=6))
    assert len(first) == 36 and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert sum(not np.array_equal(a, b) for a, b in zip(first, other)) >= 30
    assert [n.name for n in negative_networks(settings)] != [n.name for n in negative_networks(dataclasses.replace(settings, seed=6))]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_renders_and_keeps_shape_and_dtype(family):
    settings = one_family(family, generators=8)
    networks = negative_networks(settings)
    assert {n.family for n in networks} == {family}
    kinds = ClassicalStage if family == "classical" else Stage
    assert all(isinstance(stage, kinds) for n in networks for stage in n.stages)
    for size in (SIZE, 36):  # 36 px: a factor-4 network crops to 32 and pads back
        out = make_negatives(list(natural_images(8, size=size)), settings, 16)
        assert all(image.shape == (size, size, 3) and image.dtype == np.uint8 for image in out)


def test_the_space_is_broad():
    """One node's draw already varies depth, width, kernels, activation and the extras."""
    networks = negative_networks(NegativeSettings(generators=60, seed=1))
    learned = [s for n in networks for s in n.stages if isinstance(s, Stage)]
    assert {n.factor for n in networks} == {2, 4}
    assert len({s.lift.shape[0] for s in learned}) >= 4 and len({s.project.shape[0] for s in learned}) >= 3
    assert {s.activation for s in learned} == {"relu", "leaky", "softplus", "none"}
    assert any(s.norm is not None for s in learned) and any(s.noise is not None for s in learned)
    assert any(s.skip for s in learned) and any(n.reencode for n in networks)
    assert len({s.resampler for n in networks for s in n.stages if isinstance(s, ClassicalStage)}) >= 3


def test_an_excluded_family_is_never_drawn():
    settings = NegativeSettings(generators=25, exclude_families=("tconv", "classical"))
    assert {n.family for n in negative_networks(settings)} == set(FAMILIES) - {"tconv", "classical"}
    only = NegativeSettings(generators=5, families=("tconv", "nnconv"), exclude_families=("nnconv",))
    assert {n.family for n in negative_networks(only)} == {"tconv"}


def bicubic_round_trip_psnr(images: np.ndarray, factor: int) -> float:
    small = (SIZE // factor,) * 2
    return float(np.median([psnr(a, np.asarray(Image.fromarray(a).resize(small, Image.Resampling.BOX).resize((SIZE,) * 2, Image.Resampling.BICUBIC)))
                            for a in images]))


@pytest.mark.parametrize("family", FAMILIES)
def test_renders_stay_close_to_their_source_yet_differ(family):
    """Within a few dB of a bicubic round trip through the same reduced size (strongest deviation), never a copy."""
    images = natural_images(24)
    reference = {factor: bicubic_round_trip_psnr(images, factor) for factor in (2, 4)}
    for index, network in enumerate(negative_networks(one_family(family, generators=6, strength=(0.05, 0.05)))):
        scores = [psnr(a, b) for a, b in zip(images, render_negatives(images, network, np.random.default_rng(index)))]
        assert reference[network.factor] - 8 < np.median(scores) < reference[network.factor] + 3, (network.name, np.median(scores), reference)
        assert max(scores) < 45 and min(scores) > 12


def log_dct(images) -> np.ndarray:
    grey = np.stack(images).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.log(np.abs(scipy.fft.dctn(grey, axes=(1, 2), norm="ortho")) + 1e-3).reshape(len(grey), -1)


def logistic_accuracy(a: np.ndarray, b: np.ndarray, train: int) -> float:
    """Held-out accuracy of L2 logistic regression (gradient descent) on standardised features, class a vs b."""
    x_train, x_test = np.r_[a[:train], b[:train]], np.r_[a[train:], b[train:]]
    y_train = np.r_[np.zeros(train), np.ones(train)]
    y_test = np.r_[np.zeros(len(a) - train), np.ones(len(b) - train)]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    w, bias = np.zeros(x_train.shape[1]), 0.0
    for _ in range(300):
        gradient = 1 / (1 + np.exp(-(x_train @ w + bias))) - y_train
        w -= 0.5 * (x_train.T @ gradient / len(y_train) + 1e-2 * w)
        bias -= 0.5 * gradient.mean()
    return float(((x_test @ w + bias > 0) == y_test).mean())


def test_family_fingerprints_are_real():
    """A linear classifier on log-DCT spectra tells a transposed-conv network's renders from a
    classical resampler's, both from the same source images; the same network's renders split
    in two halves stay at chance (the classifier does not separate content)."""
    images = list(natural_images(240, seed=1))
    renders = {family: log_dct(make_negatives(images, one_family(family, generators=1, strength=(0.01, 0.01)), 240))
               for family in ("tconv", "classical")}
    assert logistic_accuracy(renders["tconv"], renders["classical"], 160) > 0.8
    control = renders["tconv"]
    assert logistic_accuracy(control[0::2], control[1::2], 80) < 0.7


def test_bandwidth_matching_picks_a_candidate_from_own_images():
    settings = matched_settings(list(natural_images(16)), NegativeSettings(count=16, generators=4))
    assert settings.resampling_blur in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
    assert matched_settings([], settings) == settings


def test_node_seed_mixes_in_its_source_name():
    """Two nodes with the same config draw different networks; one node always the same."""
    seeds = {source: negative_settings(NodeConfig(source=source)).seed for source in ("tconv_a", "tconv_b")}
    assert seeds["tconv_a"] != seeds["tconv_b"] and negative_settings(NodeConfig(source="tconv_a")).seed == seeds["tconv_a"]
    excluded = negative_settings(NodeConfig(source="x", negatives=NegativesConfig(exclude_families=["modconv"])))
    assert "modconv" not in {n.family for n in negative_networks(excluded)}


@pytest.mark.parametrize("make, message", [
    (lambda: NegativeSettings(families=("tconv", "stylegan")), "families has unknown"),
    (lambda: NegativeSettings(exclude_families=("nope",)), "exclude_families has unknown"),
    (lambda: NegativeSettings(families=("tconv",), exclude_families=("tconv",)), "no family left"),
    (lambda: NegativeSettings(strength=(0.05, 0.01)), "increasing positive range"),
    (lambda: NegativeSettings(count=-1), "count must be"),
    (lambda: make_negatives([], NegativeSettings(), 4), "no source images"),
    (lambda: make_negatives([np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)], NegativeSettings(), 4), "one size"),
    (lambda: make_negatives([np.zeros((6, 6, 3), np.uint8)], one_family("tconv", generators=1), 1), "too small"),
    (lambda: build(NodeConfig, {"negatives": {"exclude_families": ["gan"]}}), "negatives.exclude_families: unknown family 'gan'"),
    (lambda: build(NodeConfig, {"negatives": {"families": ["tconv"], "exclude_families": ["tconv"]}}), "leaves no family"),
])
def test_bad_settings_give_one_line_errors(make, message):
    with pytest.raises((ValueError, ConfigError), match=message) as error:
        make()
    assert "\n" not in str(error.value)

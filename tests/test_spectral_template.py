"""Spectral templates (`attribnet/lab/baselines/spectral_template.py`): each node's template, from its own
images and reals only, attributes images of periodic generators it was fitted on, and refuses to fit on nothing;
the Borda count combines two rankings without a weight."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from attribnet.lab.baselines.spectral_template import TemplateError, attribute, borda, fit_template, residual_spectra

SIZE = 32


def smooth_images(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """'Real' images: blurred noise, so their residuals carry no periodic pattern."""
    noise = rng.uniform(0, 255, (count, SIZE, SIZE, 3))
    return [np.clip(gaussian_filter(image, (1.5, 1.5, 0)), 0, 255).astype(np.uint8) for image in noise]


def generator(period: int, phase: int):
    """A 'generator' that stamps a faint periodic grid (its fingerprint) onto a real image."""
    grid = np.zeros((SIZE, SIZE, 1))
    grid[phase::period, :] += 6.0
    grid[:, phase::period] += 6.0
    return lambda image: np.clip(image + grid, 0, 255).astype(np.uint8)


def test_templates_attribute_each_generator_far_above_chance():
    rng = np.random.default_rng(0)
    generators = {"grid4": generator(4, 0), "grid3": generator(3, 1), "grid2": generator(2, 0)}
    reals = smooth_images(40, rng)
    templates = [fit_template(name, [make(x) for x in smooth_images(40, rng)], reals) for name, make in generators.items()]
    truth, images = [], []
    for name, make in generators.items():
        images += [make(x) for x in smooth_images(20, rng)]
        truth += [name] * 20
    accuracy = np.mean([p == t for p, t in zip(attribute(templates, images), truth)])
    assert accuracy >= 0.9, accuracy  # chance is 1/3
    assert all(t.fitted_on == 40 for t in templates)


def test_spectra_have_one_row_per_image_and_templates_refuse_empty_input():
    rng = np.random.default_rng(1)
    assert residual_spectra(smooth_images(3, rng)).shape == (3, SIZE * SIZE)
    with pytest.raises(TemplateError, match="needs own images and real images"):
        fit_template("grid4", [], smooth_images(2, rng))
    with pytest.raises(TemplateError, match="no node fitted one"):
        attribute([], smooth_images(1, rng))


def test_the_borda_count_adds_ranks_and_breaks_ties_by_the_heads():
    heads = np.array([[0.9, 0.8, 0.1], [0.9, 0.5, 0.1]])
    templates = np.array([[0.1, 0.7, 0.6], [0.1, 0.5, 0.9]])
    # image 0: head ranks 3 2 1 + template ranks 1 3 2 = 4 5 3 -> the second source, first by neither score alone
    # image 1: 3 2 1 + 1 2 3 = 4 4 4 -> a tie, decided by the heads' order
    assert borda(heads, templates).argmax(axis=1).tolist() == [1, 0]

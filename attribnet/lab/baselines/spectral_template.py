"""Spectral templates: a decentralised baseline with no shared backbone (after Marra et al., 2019).

Each node averages the log-magnitude Fourier spectrum of its own training images' high-pass
residuals (`preprocessing.pixel_residuals`, the residual input's own function; colour channels
averaged) and subtracts the same average over the real images it holds: what its generator adds
to every image, estimated from its own images and public reals only. A test image's residual
spectrum, centred by the node's real average, is compared with the node's template by normalised
cross-correlation, a number in [-1, 1] that is comparable across nodes without any calibration;
the best-correlated node is the image's source.

Nothing is trained and no backbone is read, so the baseline shows how much attribution the images'
spectra allow to nodes that each see only their own images (BENCHMARKS.md). `borda` combines its
ranking with the heads' without a weight to choose. Both are benchmark methods, not part of the
network: the gateway sends nodes trunk features, not spectra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.stats

from shared_backbone.model.preprocessing import pixel_residuals

BATCH = 256
LOG_FLOOR = 1e-4  # of the residual's Fourier magnitude: a zero coefficient still has a finite log


class TemplateError(ValueError):
    """A template that cannot be fitted; the message says why."""


def residual_spectra(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 (H, W, 3) images of one size -> (N, H*W) log-magnitude spectra of their residuals."""
    out = []
    for start in range(0, len(images), BATCH):
        residuals = pixel_residuals(np.stack(images[start : start + BATCH])).astype(np.float64)
        magnitude = np.abs(np.fft.fft2(residuals, axes=(1, 2)))
        out.append(np.log(magnitude + LOG_FLOOR).mean(axis=-1).reshape(len(residuals), -1))
    return np.concatenate(out) if out else np.empty((0, 0))


@dataclass(frozen=True)
class SpectralTemplate:
    """One node's template: its images' mean residual spectrum minus its reals' (`real_mean`)."""

    source: str
    template: np.ndarray  # (D,), centred to zero mean
    real_mean: np.ndarray  # (D,)
    fitted_on: int

    def correlation(self, spectra: np.ndarray) -> np.ndarray:
        """(N,) normalised cross-correlation of each spectrum, centred by this node's reals, with the template."""
        centred = spectra - self.real_mean
        centred = centred - centred.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(centred, axis=1) * np.linalg.norm(self.template)
        return centred @ self.template / np.maximum(norms, 1e-12)


def fit_template(source: str, own: Sequence[np.ndarray], reals: Sequence[np.ndarray]) -> SpectralTemplate:
    """The template of `source` from its own images and the real images its node holds."""
    if not own or not reals:
        raise TemplateError(f"spectral template of {source}: needs own images and real images (got {len(own)} and {len(reals)})")
    real_mean = residual_spectra(reals).mean(axis=0)
    template = residual_spectra(own).mean(axis=0) - real_mean
    return SpectralTemplate(source, template - template.mean(), real_mean, len(own))


def correlations(templates: Sequence[SpectralTemplate], images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, S): each image's correlation with each node's template, in the templates' order."""
    if not templates:
        raise TemplateError("spectral templates: no node fitted one")
    spectra = residual_spectra(images)
    return np.stack([t.correlation(spectra) for t in templates], axis=1)


def attribute(templates: Sequence[SpectralTemplate], images: Sequence[np.ndarray]) -> list[str]:
    """The best-correlated node of each image (closed set over the templates' sources)."""
    return [templates[i].source for i in correlations(templates, images).argmax(axis=1)]


def borda(head_scores: np.ndarray, template_scores: np.ndarray) -> np.ndarray:
    """(N, S) combined order of two (N, S) scores of the same sources: the sum of each score's ranks
    (Borda count, no weight to choose), ties going to the head's order."""
    def ranks(scores: np.ndarray) -> np.ndarray:
        return scipy.stats.rankdata(scores, axis=1)

    head_ranks = ranks(head_scores)
    return head_ranks + ranks(template_scores) + head_ranks / (head_scores.shape[1] + 1)

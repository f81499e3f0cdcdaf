"""Frank et al.'s "DCT regression": a linear classifier on normalised log-DCT spectra.

A multinomial logistic regression (softmax; two classes for detection) with an L2 penalty,
fitted by scipy's L-BFGS on the per-coefficient standardised `log_dct_spectrum` of each image.
It needs no GPU and trains in seconds, and GAN upsampling fingerprints are largely linear in the
log spectrum, so it is the strong, cheap reference every results table should carry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import scipy.optimize
from scipy.special import log_softmax, softmax

from shared_backbone.data.perturbations import image_rng
from shared_backbone.model.preprocessing import ImageDecodeError, load_image, log_dct_spectrum

log = logging.getLogger(__name__)

Perturb = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class DctLinearModel:
    """Standardisation (mean/std per coefficient) + weights (features x classes) + biases."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    l2: float

    @property
    def num_classes(self) -> int:
        return self.weights.shape[1]

    def save(self, path: str | Path) -> None:
        np.savez(Path(path), mean=self.mean, std=self.std, weights=self.weights, bias=self.bias, l2=self.l2)

    @classmethod
    def load(cls, path: str | Path) -> "DctLinearModel":
        with np.load(Path(path)) as data:
            return cls(data["mean"], data["std"], data["weights"], data["bias"], float(data["l2"]))


def iter_dct_features(
    paths: Iterable[str | Path],
    image_size: int,
    *,
    perturb: Perturb | None = None,
    seed: int = 0,
    on_error: Callable[[Path, Exception], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (position, flattened log-DCT spectrum) per readable image, one file at a time.

    `perturb(rgb, rng)` is applied to the uint8 image first (rng seeded per image by
    `perturbations.image_rng`, so a perturbed feature set is reproducible and every evaluator
    perturbs an image the same way). Unreadable files are reported to `on_error` (default:
    a warning with the path) and skipped.
    """
    for position, path in enumerate(paths):
        path = Path(path)
        try:
            rgb = load_image(path, image_size)
        except ImageDecodeError as exc:
            if on_error:
                on_error(path, exc)
            else:
                log.warning("skipping unreadable image %s: %s", path, exc)
            continue
        if perturb is not None:
            rgb = perturb(rgb, image_rng(path, seed))
        yield position, log_dct_spectrum(rgb).astype(np.float32).ravel()


def dct_features(
    paths: Sequence[str | Path], image_size: int, *, perturb: Perturb | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(features N x size², positions of the readable inputs) for a list of image files.

    The feature matrix is allocated once (float32), never as a list of rows plus a copy.
    """
    features = np.empty((len(paths), image_size * image_size), dtype=np.float32)
    positions = []
    for position, row in iter_dct_features(paths, image_size, perturb=perturb, seed=seed):
        features[len(positions)] = row
        positions.append(position)
    if not positions:
        raise ValueError("no readable images to compute DCT features from")
    return features[: len(positions)], np.asarray(positions, dtype=np.int64)


def _loss_and_grad(
    params: np.ndarray, x: np.ndarray, onehot: np.ndarray, weights_n: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    """Mean weighted cross-entropy + l2/2 |W|^2 and its gradient (bias unpenalised)."""
    n, d = x.shape
    k = onehot.shape[1]
    weights = params[: d * k].reshape(d, k)
    bias = params[d * k :]
    logits = x @ weights + bias
    log_p = log_softmax(logits, axis=1)
    loss = -np.sum(weights_n[:, None] * onehot * log_p) / n + 0.5 * l2 * np.sum(weights * weights)
    delta = weights_n[:, None] * (np.exp(log_p) - onehot) / n
    grad_w = x.T @ delta + l2 * weights
    grad_b = delta.sum(axis=0)
    return float(loss), np.concatenate([grad_w.ravel(), grad_b])


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2: float = 1e-2,
    *,
    max_iterations: int = 500,
    sample_weights: np.ndarray | None = None,
) -> DctLinearModel:
    """Fits the L2-regularised softmax regression on raw log-DCT features (standardised here).

    Use num_classes=2 with labels 0/1 for detection. `sample_weights` (e.g. class balancing)
    scale each sample's loss term.
    """
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1} with num_classes >= 2")
    mean = features.mean(axis=0)
    std = np.maximum(features.std(axis=0), 1e-8)
    x = (features - mean) / std
    onehot = np.eye(num_classes)[labels]
    weights_n = np.ones(len(labels)) if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)
    if weights_n.shape != labels.shape or np.any(weights_n < 0) or weights_n.sum() <= 0:
        raise ValueError("sample_weights must be non-negative, one per sample, not all zero")
    weights_n = weights_n / weights_n.mean()
    d = x.shape[1]
    initial = np.zeros(d * num_classes + num_classes)
    result = scipy.optimize.minimize(
        _loss_and_grad, initial, args=(x, onehot, weights_n, l2), jac=True, method="L-BFGS-B", options={"maxiter": max_iterations}
    )
    log.info("dct regression: loss %.4f after %d iterations (%s)", result.fun, result.nit, result.message)
    return DctLinearModel(
        mean=mean,
        std=std,
        weights=result.x[: d * num_classes].reshape(d, num_classes),
        bias=result.x[d * num_classes :],
        l2=l2,
    )


def predict_proba(model: DctLinearModel, features: np.ndarray) -> np.ndarray:
    """Class probabilities, N x num_classes."""
    x = (np.asarray(features, dtype=np.float64) - model.mean) / model.std
    return softmax(x @ model.weights + model.bias, axis=1)

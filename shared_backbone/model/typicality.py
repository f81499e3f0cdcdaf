"""Where a source's own images lie in trunk-feature space: a one-class density, fitted by the node.

A sigmoid head answers "more mine than the negatives I saw", not "typical of my images": a
synthetic gradient no generator made can score 0.9 on some head. So each node also models its
own images alone: one Gaussian on pooled statistics of the trunk features (`dRelu_04`, per
channel: mean, standard deviation and maximum over the spatial grid, 3 x 16 numbers), with a
Ledoit-Wolf shrinkage covariance on standardised statistics (a few hundred images estimate 48
dimensions; shrinkage keeps the inverse stable). An image's **typicality** is its negative
Mahalanobis distance to that Gaussian (0 = the centre; lower = less typical).

The node fits the Gaussian on its train split and scores its own calib-split images, which the
fit did not use: those scores are the conformal reference (`Calibration.typicality_scores`) that
turns an image's typicality into a p-value. Scores taken on the fitting images themselves are
optimistic (measured: their 5% quantile kept only 79-84% of held-out own images).

A Gaussian mixture was not added: one Gaussian already separated held-out own images from
out-of-scope images at AUROC 0.999-1.000 in the prototype. Numpy only (serving imports it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATISTICS = "channel_mean_std_max.v1"  # what `pooled_statistics` computes; stored with the model
MIN_FIT_IMAGES = 8  # below this a 48-dimensional Gaussian is mostly shrinkage: refuse
SCALE_FLOOR = 1e-3  # of the median per-statistic spread: a constant statistic still has a finite scale
EIGEN_FLOOR = 1e-6  # of the largest eigenvalue of the shrunk covariance
MAX_DISTANCE = 1e6  # typicality scores are clipped to [-MAX_DISTANCE, 0] so they always travel as finite numbers


class TypicalityError(ValueError):
    """A typicality model that cannot be fitted or loaded; the message says why."""


def pooled_statistics(features: np.ndarray) -> np.ndarray:
    """(N, H, W, C) trunk features -> (N, 3C): per-channel spatial mean, std and max, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 4:
        raise TypicalityError(f"trunk features must be (N, H, W, C), got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1), flat.max(axis=1)], axis=1)


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrinkage of the covariance of centred rows `x` towards a scaled identity."""
    n, p = x.shape
    sample = x.T @ x / n
    mu = np.trace(sample) / p
    squares = x**2
    delta = (np.sum(sample**2) - 2 * mu * np.trace(sample) + p * mu**2) / p
    beta = (np.sum(squares.T @ squares) / n - np.sum(sample**2)) / (p * n)
    shrinkage = 0.0 if delta <= 0 else float(min(max(beta, 0.0), delta) / delta)
    return (1 - shrinkage) * sample + shrinkage * mu * np.eye(p), shrinkage


@dataclass(frozen=True)
class TypicalityModel:
    """distance(x) = || whitening @ ((stats(x) - mean) / scale) ||; typicality = -distance."""

    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,) per-statistic spread of the fitting images (floored)
    whitening: np.ndarray  # (d, d)
    fitted_on: int
    shrinkage: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Typicality of each image of a batch of trunk features: (N,) values in [-MAX_DISTANCE, 0]."""
        stats = pooled_statistics(features)
        if stats.shape[1] != self.mean.shape[0]:
            raise TypicalityError(f"features give {stats.shape[1]} statistics; the model was fitted on {self.mean.shape[0]}")
        distance = np.linalg.norm(((stats - self.mean) / self.scale) @ self.whitening.T, axis=1)
        return -np.clip(np.nan_to_num(distance, nan=MAX_DISTANCE, posinf=MAX_DISTANCE), 0.0, MAX_DISTANCE)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, scale=self.scale, whitening=self.whitening, fitted_on=np.array(self.fitted_on),
                 shrinkage=np.array(self.shrinkage), statistics=np.array(STATISTICS))
        return buffer.getvalue()

    @classmethod
    def from_file(cls, path: str | Path) -> "TypicalityModel":
        """Reads what `to_bytes` wrote (no pickles); TypicalityError for anything else."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise TypicalityError(f"{path}: not a typicality model ({exc})") from None
        missing = {"mean", "scale", "whitening", "fitted_on", "shrinkage", "statistics"} - set(arrays)
        if missing:
            raise TypicalityError(f"{path}: missing {', '.join(sorted(missing))}")
        if str(arrays["statistics"]) != STATISTICS:
            raise TypicalityError(f"{path}: statistics {str(arrays['statistics'])!r}, this code computes {STATISTICS!r}")
        d = arrays["mean"].shape[0] if arrays["mean"].ndim == 1 else -1
        if d < 1 or arrays["scale"].shape != (d,) or arrays["whitening"].shape != (d, d):
            raise TypicalityError(f"{path}: inconsistent shapes {arrays['mean'].shape}, {arrays['scale'].shape}, "
                                  f"{arrays['whitening'].shape}")
        if not all(np.isfinite(arrays[k]).all() for k in ("mean", "scale", "whitening")) or (arrays["scale"] <= 0).any():
            raise TypicalityError(f"{path}: non-finite values or a scale <= 0")
        return cls(arrays["mean"].astype(np.float64), arrays["scale"].astype(np.float64),
                   arrays["whitening"].astype(np.float64), int(arrays["fitted_on"]), float(arrays["shrinkage"]))


def fit_typicality(features: np.ndarray) -> TypicalityModel:
    """One Gaussian (shrinkage covariance) on the pooled statistics of a source's own images."""
    stats = pooled_statistics(features)
    n = stats.shape[0]
    if n < MIN_FIT_IMAGES:
        raise TypicalityError(f"a typicality model needs at least {MIN_FIT_IMAGES} of the source's own images, got {n}")
    mean = stats.mean(axis=0)
    spread = stats.std(axis=0)
    floor = SCALE_FLOOR * max(float(np.median(spread)), 1e-12)
    scale = np.maximum(spread, floor)
    covariance, shrinkage = ledoit_wolf((stats - mean) / scale)
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, EIGEN_FLOOR * max(float(values.max()), 1e-12))
    whitening = (vectors / np.sqrt(values)).T
    return TypicalityModel(mean, scale, whitening, n, shrinkage)

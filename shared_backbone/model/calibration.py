"""How to read one head's score on the network's common scale, and where its own images fall.

Heads are trained independently, so their raw sigmoid outputs are not on one scale; the argmax
over heads is only meaningful after each head's score is mapped to a probability. Every node
fits that map (Platt or temperature scaling on the logit) on data model selection did not use:
its own held-out images against the coordinator's *common* calibration negatives, class-balanced
(equal prior), so every head's calibrated score answers the same question on the same scale.

The map is bounded and validated (finite, slope > 0, bounded slope and offset) and its output is
capped strictly inside (0, 1): a head cannot claim certainty, and two saturated heads tie, which
the rule reports as ambiguous instead of deciding by name.

`positive_scores` are the calibrated scores of the head's own held-out positives, sorted: the
reference distribution of its conformal p-value (`p_values`). For an image of the head's own
source, P(p-value <= alpha) <= alpha (the held-out images are exchangeable with new ones, and the
p-value depends only on ranks, so fitting the monotone map on the same images does not break it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.special

METHODS = ("platt", "temperature", "identity")
MAX_SLOPE = 50.0  # |a|: beyond this a head's score is effectively a step function
MAX_OFFSET = 30.0  # |b|: beyond this every image is (almost) certainly in or out
SCORE_FLOOR = 1e-4
SCORE_CAP = 1.0 - 1e-4  # calibrated scores never reach 1
MAX_POSITIVE_SCORES = 4096
_EPS = 1e-7


class CalibrationError(ValueError):
    """A calibration that is not finite, not increasing or out of bounds; the message says which."""


@dataclass(frozen=True)
class Calibration:
    """calibrated = clip(sigmoid(a * logit(raw) + b)); temperature fixes b = 0, identity a = 1, b = 0."""

    method: str = "identity"
    a: float = 1.0
    b: float = 0.0
    positive_scores: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        problem = _problem(self.method, self.a, self.b, self.positive_scores)
        if problem:
            raise CalibrationError(problem)

    def apply(self, raw: np.ndarray | float) -> np.ndarray:
        raw = np.clip(np.asarray(raw, dtype=np.float64), _EPS, 1 - _EPS)
        return np.clip(scipy.special.expit(self.a * scipy.special.logit(raw) + self.b), SCORE_FLOOR, SCORE_CAP)

    def p_values(self, calibrated: np.ndarray | float) -> np.ndarray | None:
        """Conformal p-values of calibrated scores against the head's own held-out positives (None: no reference)."""
        if not self.positive_scores:
            return None
        reference = np.asarray(self.positive_scores, dtype=np.float64)
        below = np.searchsorted(reference, np.asarray(calibrated, dtype=np.float64), side="right")
        return (1.0 + below) / (len(reference) + 1.0)

    def to_dict(self) -> dict:
        return {"method": self.method, "a": self.a, "b": self.b, "positive_scores": list(self.positive_scores)}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        """Raises CalibrationError (a ValueError) for anything that is not a valid calibration."""
        try:
            scores = tuple(float(s) for s in data.get("positive_scores", ()) or ())
            return cls(method=str(data.get("method")), a=float(data["a"]), b=float(data["b"]), positive_scores=scores)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"calibration needs method, a and b as numbers ({exc})") from None

    def with_positives(self, calibrated_positives: np.ndarray) -> "Calibration":
        """The same map with the conformal reference of these held-out positives (capped, sorted)."""
        scores = np.sort(np.asarray(calibrated_positives, dtype=np.float64).ravel())
        if len(scores) > MAX_POSITIVE_SCORES:  # evenly spaced order statistics keep the distribution
            scores = scores[np.linspace(0, len(scores) - 1, MAX_POSITIVE_SCORES).round().astype(int)]
        return Calibration(self.method, self.a, self.b, tuple(float(s) for s in scores))


def _problem(method: str, a: float, b: float, positive_scores: tuple[float, ...]) -> str | None:
    if method not in METHODS:
        return f"unknown calibration method {method!r}; expected one of {METHODS}"
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"calibration a={a}, b={b} must be finite"
    if not 0.0 < a <= MAX_SLOPE:
        return f"calibration slope a={a} must be in (0, {MAX_SLOPE}]: a head's score must increase with its raw output"
    if abs(b) > MAX_OFFSET:
        return f"calibration offset b={b} must be within +-{MAX_OFFSET}"
    if method == "identity" and (a, b) != (1.0, 0.0) or method == "temperature" and b != 0.0:
        return f"calibration {method} does not allow a={a}, b={b}"
    if len(positive_scores) > MAX_POSITIVE_SCORES:
        return f"{len(positive_scores)} positive scores; at most {MAX_POSITIVE_SCORES}"
    if any(not (0.0 <= s <= 1.0) for s in positive_scores):  # also refuses NaN
        return "positive scores must be calibrated scores in [0, 1]"
    if any(later < earlier for earlier, later in zip(positive_scores, positive_scores[1:])):
        return "positive scores must be sorted ascending"
    return None


def _weighted_nll(params: np.ndarray, logits: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
    z = params[0] * logits + (params[1] if len(params) > 1 else 0.0)
    return float(np.sum(weights * (np.logaddexp(0.0, z) - targets * z)) / np.sum(weights))


def fit_calibration(raw_scores: np.ndarray, labels: np.ndarray, method: str = "platt") -> Calibration:
    """Fits the map on held-out (raw score, 0/1 label) pairs: class-balanced, bounded, Platt's smoothed targets.

    Balancing gives every head the same prior (1:1) whatever its own class mix; Platt's targets
    (N+ + 1)/(N+ + 2) and 1/(N- + 2) keep a perfectly separated head from an infinite slope.
    """
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if method == "identity":
        return Calibration()
    if labels.size == 0 or labels.min() == labels.max():
        raise CalibrationError("calibration needs held-out examples of both classes")
    positives, negatives = labels.sum(), (1 - labels).sum()
    targets = np.where(labels > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    weights = np.where(labels > 0.5, 0.5 / positives, 0.5 / negatives)
    logits = scipy.special.logit(np.clip(np.asarray(raw_scores, dtype=np.float64).ravel(), _EPS, 1 - _EPS))
    platt = method == "platt"
    start = np.array([1.0, 0.0]) if platt else np.array([1.0])
    bounds = [(1e-3, MAX_SLOPE), (-MAX_OFFSET, MAX_OFFSET)] if platt else [(1e-3, MAX_SLOPE)]
    result = scipy.optimize.minimize(_weighted_nll, start, args=(logits, targets, weights), method="L-BFGS-B", bounds=bounds)
    a, b = float(result.x[0]), float(result.x[1]) if platt else 0.0
    return Calibration(method=method, a=a, b=b)

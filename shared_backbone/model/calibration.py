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
A degenerate reference (fewer than `MIN_REFERENCE` values, or none above the score floor, so every
score the map can produce has p-value 1) cannot exclude anything and would only lend a
meaningless p-value to the answers: it is accepted and treated as none. Whether a usable reference
is honest is the gateway's to check, against the node's scores on its own source's canaries
(`coordinator/gateway/audit.py`).

`typicality_scores` are the typicality scores (`model.typicality`) of the same kind of held-out own
images, sorted: the reference of the typicality p-value (`typicality_p_values`), which says whether
an image lies where the source's own images lie at all. They ride in the calibration so every
registration path (gRPC, Flower) carries them. A reference of fewer than `MIN_REFERENCE`
values, or of values all equal, cannot rank anything: it is accepted and treated as none (no
typicality p-value).
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
MAX_POSITIVE_SCORES = 4096  # also the cap of typicality_scores
MIN_REFERENCE = 10  # fewer values: no p-value (the smallest one would be 1/11 > 0.05 anyway)
MAX_TYPICALITY_MAGNITUDE = 1e9  # typicality scores are finite numbers within +-this
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
    typicality_scores: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        problem = _problem(self.method, self.a, self.b, self.positive_scores) or _typicality_problem(self.typicality_scores)
        if problem:
            raise CalibrationError(problem)

    def apply(self, raw: np.ndarray | float) -> np.ndarray:
        raw = np.clip(np.asarray(raw, dtype=np.float64), _EPS, 1 - _EPS)
        return np.clip(scipy.special.expit(self.a * scipy.special.logit(raw) + self.b), SCORE_FLOOR, SCORE_CAP)

    @property
    def has_reference(self) -> bool:
        """True when the conformal reference can exclude something (enough values, one above the score floor)."""
        scores = self.positive_scores
        return len(scores) >= MIN_REFERENCE and scores[-1] > SCORE_FLOOR

    def p_values(self, calibrated: np.ndarray | float) -> np.ndarray | None:
        """Conformal p-values of calibrated scores against the head's own held-out positives (None: no usable reference)."""
        return _conformal(self.positive_scores, calibrated) if self.has_reference else None

    @property
    def has_typicality(self) -> bool:
        """True when the typicality reference can rank (enough values, not all equal)."""
        scores = self.typicality_scores
        return len(scores) >= MIN_REFERENCE and scores[0] < scores[-1]

    def typicality_p_values(self, typicality: np.ndarray | float) -> np.ndarray | None:
        """Conformal p-values of typicality scores against the head's held-out own images (None: no usable reference)."""
        return _conformal(self.typicality_scores, typicality) if self.has_typicality else None

    def to_dict(self) -> dict:
        return {"method": self.method, "a": self.a, "b": self.b, "positive_scores": list(self.positive_scores),
                "typicality_scores": list(self.typicality_scores)}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        """Raises CalibrationError (a ValueError) for anything that is not a valid calibration."""
        try:
            scores = tuple(float(s) for s in data.get("positive_scores", ()) or ())
            typicality = tuple(float(s) for s in data.get("typicality_scores", ()) or ())
            return cls(method=str(data.get("method")), a=float(data["a"]), b=float(data["b"]), positive_scores=scores,
                       typicality_scores=typicality)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"calibration needs method, a and b as numbers ({exc})") from None

    def with_positives(self, calibrated_positives: np.ndarray, groups: np.ndarray | None = None) -> "Calibration":
        """The same map with the conformal reference of these held-out positives (capped, sorted); with
        `groups` (each positive's photo), balanced so every group weighs the same (`group_balanced`)."""
        scores = calibrated_positives if groups is None else group_balanced(calibrated_positives, groups)
        return Calibration(self.method, self.a, self.b, _reference(scores), self.typicality_scores)

    def with_typicality(self, typicality_of_held_out: np.ndarray) -> "Calibration":
        """The same calibration with the typicality reference of these held-out own images (capped, sorted)."""
        return Calibration(self.method, self.a, self.b, self.positive_scores, _reference(typicality_of_held_out))


def group_balanced(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The same number of values from every group: each group's evenly spaced quantiles.

    Patches of one photograph are not exchangeable with patches of another; photographs are. A
    reference in which each held-out photo weighs the same (its own score distribution, sampled at
    k evenly spaced quantiles, k the largest group's size within the reference cap) gives a new
    photo's patch the p-value of a photo-level conformal test, where a per-patch reference lets the
    photos with most patches decide."""
    values, groups = np.asarray(values, dtype=np.float64).ravel(), np.asarray(groups).ravel()
    names, sizes = np.unique(groups, return_counts=True)
    per_group = max(1, min(int(sizes.max()), MAX_POSITIVE_SCORES // len(names)))
    levels = (np.arange(per_group) + 0.5) / per_group
    return np.concatenate([np.quantile(values[groups == name], levels, method="inverted_cdf") for name in names])


def _reference(values: np.ndarray) -> tuple[float, ...]:
    """Sorted, at most MAX_POSITIVE_SCORES values: evenly spaced order statistics keep the distribution."""
    scores = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if len(scores) > MAX_POSITIVE_SCORES:
        scores = scores[np.linspace(0, len(scores) - 1, MAX_POSITIVE_SCORES).round().astype(int)]
    return tuple(float(s) for s in scores)


def _conformal(reference: tuple[float, ...], values: np.ndarray | float) -> np.ndarray:
    """(1 + #reference <= value) / (n + 1): P(p <= alpha) <= alpha for a value exchangeable with the reference."""
    below = np.searchsorted(np.asarray(reference, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")
    return (1.0 + below) / (len(reference) + 1.0)


def _typicality_problem(scores: tuple[float, ...]) -> str | None:
    if len(scores) > MAX_POSITIVE_SCORES:
        return f"{len(scores)} typicality scores; at most {MAX_POSITIVE_SCORES}"
    if any(not (abs(s) <= MAX_TYPICALITY_MAGNITUDE) for s in scores):  # also refuses NaN and infinity
        return f"typicality scores must be finite numbers within +-{MAX_TYPICALITY_MAGNITUDE:g}"
    if any(later < earlier for earlier, later in zip(scores, scores[1:])):
        return "typicality scores must be sorted ascending"
    return None


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

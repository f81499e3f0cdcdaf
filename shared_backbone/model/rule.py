"""The attribution rule, applied identically by offline prediction and by the gateway.

1. The primary module's real/fake score takes priority: `fake_score < fake_threshold` is `real`.
2. The **prediction set** is every answering source whose conformal p-value is above `alpha`
   (a head registered without held-out positives has no p-value and is always in the set), by
   descending calibrated score. For an image of a registered source, its own source is missing
   from the set at most at rate alpha.
3. The **candidates** are the sources of the set whose calibrated score also reaches their own
   head's threshold (each head has its own).
4. No candidate: `unknown` (no head recognises the image, or no head answered).
5. The two best candidates within `margin` of each other: `ambiguous`. A tie is never decided
   by name order.
6. Otherwise the best candidate.

The paper's closed-set rule is the same function with `alpha = 0`, thresholds 0 and no margin
(`closed_set`): the argmax of the calibrated scores, ties still reported as ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared_backbone.model.calibration import Calibration

REAL = "real"
UNKNOWN = "unknown"
AMBIGUOUS = "ambiguous"
RESERVED = (REAL, UNKNOWN, AMBIGUOUS)  # never a source name
DEFAULT_FAKE_THRESHOLD = 0.5
DEFAULT_THRESHOLD = 0.5
DEFAULT_ALPHA = 0.05
DEFAULT_MARGIN = 0.01


@dataclass(frozen=True)
class Decision:
    """`attribution` is `real`, `unknown`, `ambiguous` or a source; `prediction_set` the sources kept."""

    attribution: str
    prediction_set: list[str] = field(default_factory=list)


def decide(
    fake_score: float,
    calibrated: dict[str, float],
    thresholds: dict[str, float],
    fake_threshold: float = DEFAULT_FAKE_THRESHOLD,
    *,
    p_values: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    margin: float = DEFAULT_MARGIN,
) -> Decision:
    """The rule of the module docstring for one image."""
    if fake_score < fake_threshold:
        return Decision(REAL)
    p_values = p_values or {}
    ranked = sorted(calibrated, key=lambda source: (-calibrated[source], source))
    kept = [s for s in ranked if s not in p_values or p_values[s] > alpha]
    candidates = [s for s in kept if calibrated[s] >= thresholds.get(s, DEFAULT_THRESHOLD)]
    if not candidates:
        return Decision(UNKNOWN, kept)
    if len(candidates) > 1 and calibrated[candidates[0]] - calibrated[candidates[1]] <= margin:
        return Decision(AMBIGUOUS, kept)
    return Decision(candidates[0], kept)


def closed_set(fake_score: float, calibrated: dict[str, float], fake_threshold: float = DEFAULT_FAKE_THRESHOLD) -> Decision:
    """The paper's rule: detector first, then the argmax of the calibrated scores (exact ties ambiguous)."""
    return decide(fake_score, calibrated, {s: 0.0 for s in calibrated}, fake_threshold, alpha=0.0, margin=0.0)


@dataclass(frozen=True)
class RuleSettings:
    """The network-wide knobs of the rule (the gateway's and `attribnet predict`'s config)."""

    fake_threshold: float = DEFAULT_FAKE_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        for name in ("fake_threshold", "alpha", "margin"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass
class ImageAttribution:
    """One image's answer; offline prediction and the gateway both produce this."""

    fake_score: float
    raw: dict[str, float] = field(default_factory=dict)
    calibrated: dict[str, float] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)
    prediction_set: list[str] = field(default_factory=list)
    attribution: str = UNKNOWN


def attribute_batch(
    fake_scores: np.ndarray,
    raw: dict[str, np.ndarray],
    calibrations: dict[str, Calibration],
    thresholds: dict[str, float],
    settings: RuleSettings = RuleSettings(),
) -> list[ImageAttribution]:
    """Raw head scores of a batch -> calibrated scores, p-values and the decision, per image.

    `raw`, `calibrations` and `thresholds` are keyed by source and hold only the heads that answered.
    """
    calibrated = {s: calibrations[s].apply(np.asarray(scores, dtype=np.float64)) for s, scores in raw.items()}
    p_values = {s: p for s in raw if (p := calibrations[s].p_values(calibrated[s])) is not None}
    results = []
    for i, fake in enumerate(np.asarray(fake_scores, dtype=np.float64)):
        scores = {s: float(values[i]) for s, values in calibrated.items()}
        p_image = {s: float(values[i]) for s, values in p_values.items()}
        decision = decide(float(fake), scores, thresholds, settings.fake_threshold, p_values=p_image,
                          alpha=settings.alpha, margin=settings.margin)
        results.append(ImageAttribution(
            fake_score=float(fake), raw={s: float(values[i]) for s, values in raw.items()}, calibrated=scores,
            p_values=p_image, prediction_set=decision.prediction_set, attribution=decision.attribution,
        ))
    return results

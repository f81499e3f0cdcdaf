"""The attribution rule, applied identically by offline prediction and by the gateway.

1. An input too small to judge (its shorter side below the backbone's input size: upscaling would
   replace the very frequencies a fingerprint lives in) is `unknown` with a reason
   (`out_of_scope`); it never reaches the rule below.
2. The primary module's real/fake score takes priority: `fake_score < fake_threshold` is `real`.
3. Sources are **ranked** by their heads' raw scores (`rank_by: raw`, the default and the paper's
   argmax of the sigmoid outputs) or by their calibrated scores (`rank_by: calibrated`).
   Calibration decides whether a source may be named (steps 4-5), not the order. Neither order
   wins on every dataset measured; raw won the founding setting of both zoos and most earlier
   runs (BENCHMARKS.md, "Ranking by raw or calibrated scores").
4. The **prediction set** is every answering source that cannot be excluded at level `alpha`: its
   conformal p-value (of its calibrated score) is above `alpha`, or it has no p-value (a head
   registered without a usable reference of held-out positives, e.g. an imported paper head or a
   degenerate reference, cannot be excluded and so stays in the set), in rank order. For an image of a registered source with a reference,
   its own source is missing from the set at most at rate alpha.
5. The **candidates** are the sources of the set whose calibrated score also reaches their own
   head's threshold (each head has its own).
6. No candidate: `unknown` (no head recognises the image, or no head answered).
7. The two best candidates within `margin` of each other on the log-odds scale of the ranking
   scores (`margin` 0.1: odds within about 10%): `ambiguous`, or `unknown` when both find the
   image atypical (8). A tie is never decided by name order, and two heads saturated at the
   cap tie exactly.
8. Otherwise the best candidate wins, **if it finds the image typical**: its typicality p-value
   (`model.typicality`: where the source's own held-out images lie in trunk-feature space) is
   above `typicality_alpha`. An atypical winner gives `unknown`: "more mine than the negatives
   I saw" is not "one of mine". A head without a usable typicality reference (none registered,
   fewer than 10 values, or all equal; e.g. imported paper heads) cannot find anything
   atypical: it is not gated, and its answers carry no typicality p-value.

Every answer carries the exit that gave it (`REASONS`: `detector_real`, `no_candidate`, `tie`,
`atypical_tie`, `atypical`, `best_source`, or `out_of_scope`), so a client reading `unknown` knows
whether no source claimed the image or the best one found it atypical.

The paper's closed-set rule is the same function with `alpha = 0`, thresholds 0, no margin and
no typicality gate (`closed_set`): the argmax of the ranking scores, ties still ambiguous.
"""

from __future__ import annotations

import math
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
DEFAULT_MARGIN = 0.1  # log-odds
DEFAULT_TYPICALITY_ALPHA = 0.05  # 0.01 would need >= 99 reference images to ever reject
RANK_BY = ("raw", "calibrated")  # which scores order the sources (step 3)

# Why the rule answered as it did (`Decision.reason`; the wire's `ImageResult.decision_reason`), one code per
# exit of the rule, with the line a reader sees.
REASONS = {
    "out_of_scope": "too small to judge (step 1)",
    "detector_real": "the detector's fake score is below its threshold (step 2)",
    "no_candidate": "no source that cannot be excluded reaches its own threshold, or no source answered (steps 4-6)",
    "tie": "the two best sources are within the margin of each other (step 7)",
    "atypical_tie": "the two best sources are within the margin and both find the image atypical (steps 7-8)",
    "atypical": "the best source finds the image atypical of its own images (step 8)",
    "best_source": "the best source reaches its threshold, clear of the next, and finds the image typical (step 8)",
}


@dataclass(frozen=True)
class Decision:
    """`attribution` is `real`, `unknown`, `ambiguous` or a source; `prediction_set` the sources kept;
    `reason` the rule's exit that gave the answer (a key of `REASONS`)."""

    attribution: str
    prediction_set: list[str] = field(default_factory=list)
    reason: str = ""  # `decide` always sets it


def decide(
    fake_score: float,
    calibrated: dict[str, float],
    thresholds: dict[str, float],
    fake_threshold: float = DEFAULT_FAKE_THRESHOLD,
    *,
    p_values: dict[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    margin: float = DEFAULT_MARGIN,
    typicality_p_values: dict[str, float] | None = None,
    typicality_alpha: float = DEFAULT_TYPICALITY_ALPHA,
    ranking: dict[str, float] | None = None,
) -> Decision:
    """The rule of the module docstring (steps 2-8) for one image; `ranking` orders the sources (default: `calibrated`)."""
    if fake_score < fake_threshold:
        return Decision(REAL, reason="detector_real")
    p_values = p_values or {}
    typicality_p_values = typicality_p_values or {}
    ranking = calibrated if ranking is None else ranking

    def typical(source: str) -> bool:
        return source not in typicality_p_values or typicality_p_values[source] > typicality_alpha

    ranked = sorted(calibrated, key=lambda source: (-ranking[source], source))
    kept = [s for s in ranked if s not in p_values or p_values[s] > alpha]
    candidates = [s for s in kept if calibrated[s] >= thresholds.get(s, DEFAULT_THRESHOLD)]
    if not candidates:
        return Decision(UNKNOWN, kept, "no_candidate")
    if len(candidates) > 1 and _log_odds(ranking[candidates[0]]) - _log_odds(ranking[candidates[1]]) <= margin:
        if typical(candidates[0]) or typical(candidates[1]):
            return Decision(AMBIGUOUS, kept, "tie")
        return Decision(UNKNOWN, kept, "atypical_tie")
    if typical(candidates[0]):
        return Decision(candidates[0], kept, "best_source")
    return Decision(UNKNOWN, kept, "atypical")


def _log_odds(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def closed_set(fake_score: float, scores: dict[str, float], fake_threshold: float = DEFAULT_FAKE_THRESHOLD) -> Decision:
    """The paper's rule: detector first, then the argmax of `scores` (exact ties ambiguous, no typicality gate)."""
    return decide(fake_score, scores, {s: 0.0 for s in scores}, fake_threshold, alpha=0.0, margin=0.0)


@dataclass(frozen=True)
class RuleSettings:
    """The network-wide knobs of the rule (the gateway's and `attribnet predict`'s config)."""

    fake_threshold: float = DEFAULT_FAKE_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    margin: float = DEFAULT_MARGIN
    typicality_alpha: float = DEFAULT_TYPICALITY_ALPHA  # a winner with typicality p-value <= this: unknown
    rank_by: str = "raw"  # which scores order the sources: "raw" (the paper's argmax) or "calibrated"

    def __post_init__(self) -> None:
        if self.rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be one of {', '.join(RANK_BY)}, got {self.rank_by!r}")
        for name in ("fake_threshold", "alpha", "typicality_alpha"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.margin <= 5.0:
            raise ValueError(f"margin must be in [0, 5] (log-odds), got {self.margin}")


@dataclass
class ImageAttribution:
    """One image's answer; offline prediction and the gateway both produce this."""

    fake_score: float
    raw: dict[str, float] = field(default_factory=dict)
    calibrated: dict[str, float] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)
    prediction_set: list[str] = field(default_factory=list)
    attribution: str = UNKNOWN
    typicality: dict[str, float] = field(default_factory=dict)  # sources whose node sent a typicality score
    typicality_p_values: dict[str, float] = field(default_factory=dict)  # those with a usable reference
    out_of_scope: str = ""  # why the image was not judged (then `unknown`, nothing else set)
    reason: str = ""  # the rule's exit that gave `attribution` (a key of `REASONS`; every constructor here sets it)

    def ranking(self, rank_by: str) -> dict[str, float]:
        """The scores that order the sources under `rank_by` (`RuleSettings.rank_by`)."""
        return self.raw if rank_by == "raw" else self.calibrated


def out_of_scope(reason: str) -> ImageAttribution:
    """The answer for an input the network does not judge (too small): `unknown`, with the reason."""
    return ImageAttribution(fake_score=0.0, attribution=UNKNOWN, out_of_scope=reason, reason="out_of_scope")


def attribute_batch(
    fake_scores: np.ndarray,
    raw: dict[str, np.ndarray],
    calibrations: dict[str, Calibration],
    thresholds: dict[str, float],
    settings: RuleSettings = RuleSettings(),
    typicality: dict[str, np.ndarray] | None = None,
) -> list[ImageAttribution]:
    """Raw head scores (and typicality scores) of a batch -> calibrated scores, p-values and the decision, per image.

    `raw`, `calibrations` and `thresholds` are keyed by source and hold only the heads that answered;
    `typicality` only the answering heads that sent typicality scores.
    """
    typicality = {s: np.asarray(values, dtype=np.float64) for s, values in (typicality or {}).items() if s in raw}
    calibrated = {s: calibrations[s].apply(np.asarray(scores, dtype=np.float64)) for s, scores in raw.items()}
    p_values = {s: p for s in raw if (p := calibrations[s].p_values(calibrated[s])) is not None}
    typical_p = {s: p for s, values in typicality.items() if (p := calibrations[s].typicality_p_values(values)) is not None}
    results = []
    for i, fake in enumerate(np.asarray(fake_scores, dtype=np.float64)):
        scores = {s: float(values[i]) for s, values in calibrated.items()}
        p_image = {s: float(values[i]) for s, values in p_values.items()}
        typical_image = {s: float(values[i]) for s, values in typical_p.items()}
        raw_image = {s: float(values[i]) for s, values in raw.items()}
        decision = decide(float(fake), scores, thresholds, settings.fake_threshold, p_values=p_image,
                          alpha=settings.alpha, margin=settings.margin, typicality_p_values=typical_image,
                          typicality_alpha=settings.typicality_alpha,
                          ranking=raw_image if settings.rank_by == "raw" else scores)
        results.append(ImageAttribution(
            fake_score=float(fake), raw=raw_image, calibrated=scores,
            p_values=p_image, prediction_set=decision.prediction_set, attribution=decision.attribution, reason=decision.reason,
            typicality={s: float(values[i]) for s, values in typicality.items()}, typicality_p_values=typical_image,
        ))
    return results

"""The attribution rule and the offline attributor; the gateway applies the same rule over gRPC.

Rule (the paper's, plus open-set rejection): the primary module's real/fake score takes priority,
so `fake_score < fake_threshold` gives `real`; otherwise the source whose calibrated head score is
highest wins, unless no calibrated score clears its head's threshold, which gives `unknown`.

Trunk features cross the network as float16; `to_wire_features` is applied offline too, so offline
prediction and the network give identical answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared_backbone import models
from shared_backbone.bundle import Bundle
from shared_backbone.heads import Head
from shared_backbone.preprocessing import InputSpec

REAL = "real"
UNKNOWN = "unknown"
DEFAULT_FAKE_THRESHOLD = 0.5
FEATURE_WIRE_DTYPE = np.float16


def to_wire_features(features: np.ndarray) -> np.ndarray:
    """Trunk features as they travel to heads: float16, C-contiguous."""
    return np.ascontiguousarray(features, dtype=FEATURE_WIRE_DTYPE)


def decide(
    fake_score: float,
    calibrated: dict[str, float],
    thresholds: dict[str, float],
    fake_threshold: float = DEFAULT_FAKE_THRESHOLD,
) -> str:
    """`real`, the winning source, or `unknown` (no head confident, or no head answered)."""
    if fake_score < fake_threshold:
        return REAL
    if not calibrated:
        return UNKNOWN
    source = max(sorted(calibrated), key=lambda name: calibrated[name])
    return source if calibrated[source] >= thresholds.get(source, 0.5) else UNKNOWN


@dataclass
class ImageAttribution:
    """One image's answer; offline and network paths both produce this."""

    fake_score: float
    raw: dict[str, float] = field(default_factory=dict)
    calibrated: dict[str, float] = field(default_factory=dict)
    attribution: str = UNKNOWN


class OfflineAttributor:
    """Backbone + local heads in one process: `attribnet predict` and the reference for tests."""

    def __init__(self, bundle: Bundle, heads: list[Head], fake_threshold: float = DEFAULT_FAKE_THRESHOLD) -> None:
        for head in heads:
            if head.backbone_digest != bundle.digest:
                raise ValueError(f"head {head.source!r} belongs to backbone {head.backbone_digest[:12]}, not {bundle.short_digest}")
        sources = [head.source for head in heads]
        if len(set(sources)) != len(sources):
            raise ValueError(f"two heads claim the same source: {sorted(s for s in sources if sources.count(s) > 1)[0]!r}")
        self.bundle = bundle
        self.spec: InputSpec = bundle.input_spec
        self.primary = bundle.load_primary()
        self.serving = models.build_serving_model(self.primary)
        self.heads = heads
        self.fake_threshold = fake_threshold

    def run_backbone(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fake scores (N,), wire-format trunk features) for a batch of model inputs."""
        fake, features = self.serving(inputs, training=False)
        return np.asarray(fake).reshape(-1).astype(np.float64), to_wire_features(np.asarray(features))

    def attribute(self, inputs: np.ndarray) -> list[ImageAttribution]:
        return self.attribute_features(*self.run_backbone(inputs))

    def attribute_features(self, fake_scores: np.ndarray, features: np.ndarray) -> list[ImageAttribution]:
        """The decision from `run_backbone`'s outputs, for callers that also need the features (heatmaps)."""
        features32 = features.astype(np.float32)
        raw_by_source = {head.source: head.raw_scores(features32) for head in self.heads}
        results = []
        for i, fake in enumerate(fake_scores):
            raw = {source: float(scores[i]) for source, scores in raw_by_source.items()}
            calibrated = {head.source: float(head.calibration.apply(raw[head.source])) for head in self.heads}
            thresholds = {head.source: head.threshold for head in self.heads}
            results.append(
                ImageAttribution(
                    fake_score=float(fake),
                    raw=raw,
                    calibrated=calibrated,
                    attribution=decide(float(fake), calibrated, thresholds, self.fake_threshold),
                )
            )
        return results

"""The offline attributor: backbone + local heads in one process, deciding with the shared rule.

It is `attribnet predict` and the reference the network's answers are tested against: features
are rounded to the heads' float16 input exactly as on the wire, so both give identical answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared_backbone.model import networks
from shared_backbone.model.bundle import Bundle
from shared_backbone.model.features import as_head_features
from shared_backbone.model.heads import Head
from shared_backbone.model.preprocessing import InputSpec
from shared_backbone.model.rule import DEFAULT_FAKE_THRESHOLD, UNKNOWN, decide


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
        self.serving = networks.build_serving_model(self.primary)
        self.heads = heads
        self.fake_threshold = fake_threshold

    def run_backbone(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fake scores (N,), trunk features as heads read them) for a batch of model inputs."""
        fake, features = self.serving(inputs, training=False)
        return np.asarray(fake).reshape(-1).astype(np.float64), as_head_features(np.asarray(features))

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

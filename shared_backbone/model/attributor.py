"""The offline attributor: backbone + local heads in one process, deciding with the shared rule.

It is `attribnet predict` and the reference the network's answers are tested against: features
are rounded to the heads' float16 input exactly as on the wire, so both give identical answers.
"""

from __future__ import annotations

import numpy as np

from shared_backbone.model import networks
from shared_backbone.model.bundle import Bundle
from shared_backbone.model.features import as_head_features
from shared_backbone.model.heads import Head
from shared_backbone.model.preprocessing import InputSpec
from shared_backbone.model.rule import ImageAttribution, RuleSettings, attribute_batch


class OfflineAttributor:
    """Backbone + local heads in one process: `attribnet predict` and the reference for tests."""

    def __init__(self, bundle: Bundle, heads: list[Head], settings: RuleSettings = RuleSettings()) -> None:
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
        self.settings = settings

    def run_backbone(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fake scores (N,), trunk features as heads read them) for a batch of model inputs."""
        fake, features = self.serving(inputs, training=False)
        return np.asarray(fake).reshape(-1).astype(np.float64), as_head_features(np.asarray(features))

    def attribute(self, inputs: np.ndarray) -> list[ImageAttribution]:
        return self.attribute_features(*self.run_backbone(inputs))

    def attribute_features(self, fake_scores: np.ndarray, features: np.ndarray) -> list[ImageAttribution]:
        """The decision from `run_backbone`'s outputs, for callers that also need the features (heatmaps)."""
        return attribute_with_heads(self.heads, fake_scores, features, self.settings)


def attribute_with_heads(heads: list[Head], fake_scores: np.ndarray, features: np.ndarray,
                         settings: RuleSettings = RuleSettings()) -> list[ImageAttribution]:
    """Every local head's raw and typicality scores of the heads' float16 features, then the shared rule: what
    the gateway decides from the nodes' answers, in one process (`attribnet predict`, the benchmarks)."""
    features32 = features.astype(np.float32)
    raw = {head.source: head.raw_scores(features32) for head in heads}
    typicality = {head.source: head.typicality_scores(features) for head in heads if head.typicality is not None}
    calibrations = {head.source: head.calibration for head in heads}
    thresholds = {head.source: head.threshold for head in heads}
    return attribute_batch(fake_scores, raw, calibrations, thresholds, settings, typicality)

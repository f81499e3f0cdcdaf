"""The evaluation gate of federated fine-tuning: a new backbone is published only if it still detects.

The coordinator scores its own held-out data (`data`, split `federation.gate_split`, at most
`gate_max_images` images) with the current primary module and with the aggregated one; the new
one passes when its detection accuracy is at most `federation.gate_tolerance` lower. Without
held-out data nothing is published: a node's update never reaches the network unchecked.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from coordinator.config import CoordinatorConfig
from coordinator.flower.results import FederationError
from shared_backbone.model.bundle import Bundle

log = logging.getLogger(__name__)


def _accuracy(model: Any, samples: list, labels: np.ndarray, spec: Any) -> float:
    from shared_backbone.training.evaluation import predict_scores

    scores = predict_scores(model, samples, spec)
    return float(np.mean((scores >= 0.5) == (labels > 0.5)))


def coordinator_split(config: CoordinatorConfig, spec: Any) -> tuple[Any, dict[str, list]]:
    """(index, splits) of the coordinator's own data read at the bundle's input size and mode: what the gate
    judges and the `attribution` objective's tail refit trains on. Fine-tuning cannot run without it."""
    from shared_backbone.data.datasets import load_split

    if not config.data.root:
        raise FederationError("fine-tuning needs the coordinator's held-out data (`data.root`) for its evaluation gate")
    return load_split(dataclasses.replace(config.data, image_size=spec.image_size, mode=spec.mode))


def evaluation_gate(config: CoordinatorConfig, bundle: Bundle, weights: list[np.ndarray]) -> dict[str, Any]:
    """{passed, split, images, accuracy_before, accuracy_after, tolerance} of the aggregated weights."""
    from shared_backbone.training.fit import detection_labels

    fed = config.federation
    spec = bundle.input_spec
    index, splits = coordinator_split(config, spec)
    samples = splits.get(fed.gate_split, [])[: fed.gate_max_images]
    if not samples:
        raise FederationError(f"the evaluation gate's split {fed.gate_split!r} of {index.root} is empty")
    labels = detection_labels(index, samples)
    before = _accuracy(bundle.load_primary(), samples, labels, spec)
    candidate = bundle.load_primary()
    candidate.set_weights(weights)
    after = _accuracy(candidate, samples, labels, spec)
    gate = {"split": fed.gate_split, "images": len(samples), "accuracy_before": before, "accuracy_after": after,
            "tolerance": fed.gate_tolerance, "passed": bool(after >= before - fed.gate_tolerance)}
    log.info("evaluation gate: %s", gate)
    return gate

"""A node's step of federated fine-tuning: the global primary module, trained a little on local data.

Only nodes that opt in run this, with one of two objectives (`FINETUNE_OBJECTIVES`, the coordinator's
`federation.finetune_objective`):
- `detection`: the detector's task, real vs. fake: the node's own images are fakes (label 1) and
  the reference set's real sources are reals (label 0); other reference sources count as fakes.
- `attribution`: the node's own head task (own images vs the reference set and self-made
  negatives, exactly the head's training data) trains the trunk together with a fresh head. Only
  the trunk changes; the coordinator refits its detector's tail on the averaged trunk. This asks
  the shared trunk for what every head needs: features that tell this node's source apart.
The updated weights of the *shared* primary module go back to the coordinator for averaging; the
images and the temporary head never leave.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from node import state
from node.config import NodeConfig
from node.head_data import head_data, node_splits, scan_node_folder
from node.train_head import head_model, image_sets
from shared_backbone.config import to_dict
from shared_backbone.data.datasets import Sample
from shared_backbone.training.fit import fit, fit_arrays, prepare_run_dir, timestamp
from shared_backbone.model import networks
from shared_backbone.model.bundle import Bundle
from shared_backbone.model.preprocessing import to_model_inputs
from shared_backbone.protocol.flower_messages import FINETUNE_OBJECTIVES

log = logging.getLogger(__name__)


def _split(root: str, config: NodeConfig) -> dict[str, list[Sample]]:
    return node_splits(scan_node_folder(root, config), config)


def detection_splits(config: NodeConfig, real_sources: list[str]) -> dict[str, tuple[list[Sample], np.ndarray]]:
    """(samples, 1=fake/0=real labels) per split: the node's own images plus the reference set."""
    local = _split(config.data.root, config)
    reference = _split(config.reference, config) if config.reference else {}
    result = {}
    for split in ("train", "val"):
        samples = [s for s in local[split] if s.source == config.source] + list(reference.get(split, []))
        labels = np.array([0.0 if s.source in real_sources else 1.0 for s in samples], dtype=np.float32)
        result[split] = (samples, labels)
    labels = result["train"][1]
    if not labels.any() or labels.all():
        raise ValueError(
            f"node {config.source}: fine-tuning needs real and fake images (reals come from the reference set's "
            f"real sources {real_sources}); got {int(labels.sum())} fake, {int((1 - labels).sum())} real"
        )
    return result


def finetune_primary(config: NodeConfig, bundle: Bundle, weights: list[np.ndarray], real_sources: list[str]
                     ) -> tuple[list[np.ndarray], int]:
    """Trains the primary module from `weights` for `config.train.epochs`; returns new weights and example count."""
    splits = detection_splits(config, real_sources)
    primary = bundle.load_primary()
    primary.set_weights(weights)
    run_dir = prepare_run_dir(Path(config.state_dir) / state.FINETUNE_RUNS_DIR / timestamp(), to_dict(config),
                                       config.train.seed, exist_ok=True)
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    fit(primary, train_x, train_y, val_x, val_y, bundle.input_spec, config.train, run_dir,
                 perturb=config.perturb, progress=False)
    log.info("node %s: fine-tuned the primary module on %d images", config.source, len(train_x))
    return [np.asarray(w) for w in primary.get_weights()], len(train_x)


def finetune(config: NodeConfig, bundle: Bundle, weights: list[np.ndarray], real_sources: list[str],
             objective: str = "detection") -> tuple[list[np.ndarray], int]:
    """One round of the node's fine-tuning under `objective` (see the module docstring)."""
    if objective not in FINETUNE_OBJECTIVES:
        raise ValueError(f"fine-tuning objective must be one of {', '.join(FINETUNE_OBJECTIVES)}, got {objective!r}")
    if objective == "attribution":
        return finetune_trunk_for_attribution(config, bundle, weights)
    return finetune_primary(config, bundle, weights, real_sources)


def finetune_trunk_for_attribution(config: NodeConfig, bundle: Bundle, weights: list[np.ndarray]
                                   ) -> tuple[list[np.ndarray], int]:
    """The trunk trained from `weights` with a fresh head on the node's head task; returns the primary
    module's weights (its detector tail untouched) and the example count."""
    spec = bundle.input_spec
    sets = image_sets(config, head_data(config, bundle), spec, splits=("train", "val"))
    primary = bundle.load_primary()
    primary.set_weights(weights)
    model = networks.build_attribution_model(networks.build_trunk(primary), head_model(config, spec), train_trunk=True)
    run_dir = prepare_run_dir(Path(config.state_dir) / state.FINETUNE_RUNS_DIR / timestamp(), to_dict(config),
                              config.train.seed, exist_ok=True)
    train, val = sets["train"], sets["val"]
    fit_arrays(model, to_model_inputs(train.images, spec), train.y, to_model_inputs(val.images, spec), val.y,
               config.train, run_dir, progress=False)
    log.info("node %s: fine-tuned the trunk for attribution on %d images", config.source, len(train.y))
    return [np.asarray(w) for w in primary.get_weights()], len(train.y)

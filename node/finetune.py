"""A node's step of federated fine-tuning: the global primary module, trained a little on local data.

Only nodes that opt in run this. The detector's task is real vs. fake, so the node's own images
are fakes (label 1) and the reference set's real sources are reals (label 0); other reference
sources count as fakes. The updated weights of the *shared* primary module go back to the
coordinator for averaging; the images never leave.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from node import state
from node.config import NodeConfig
from node.head_data import node_splits, scan_node_folder
from shared_backbone.config import to_dict
from shared_backbone.data.datasets import Sample
from shared_backbone.training.fit import fit, prepare_run_dir, timestamp
from shared_backbone.model.bundle import Bundle

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

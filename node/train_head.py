"""A node's head training: verify the bundle, train on the frozen trunk, calibrate, store.

Positives are the images of the node's own `source` under `data.root`; negatives are every other
source folder there (local negatives) plus every source of the coordinator's reference set.
The Flower ClientApp calls `train_head` too, so it needs nothing but the config and the bundle.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node import state
from node.config import BUNDLE_KEYS, NodeConfig
from shared_backbone.config import DataConfig, to_dict
from shared_backbone.data.datasets import SPLITS, DatasetIndex, Sample, scan_dataset, split_samples
from shared_backbone.experiments import training
from shared_backbone.experiments.evaluation import predict_scores
from shared_backbone.experiments.metrics import binary_metrics
from shared_backbone.model import networks
from shared_backbone.model.bundle import Bundle, load_configured_bundle
from shared_backbone.model.calibration import fit_calibration
from shared_backbone.model.heads import Head, save_head

log = logging.getLogger(__name__)



@dataclass
class HeadTrainingResult:
    head_dir: Path
    head: Head
    metrics: dict[str, Any]


def scan_node_folder(root: str, data: DataConfig) -> DatasetIndex:
    """Scans a folder-per-source set of this node (local data or the reference set).

    Which sources are real is the caller's business (a head does not care), so none is required.
    """
    return scan_dataset(dataclasses.replace(data, root=root, real_sources=[], source_ids=""))


def split_node_folder(index: DatasetIndex, data: DataConfig) -> dict[str, list[Sample]]:
    """The node's deterministic train/val/test split of a scanned folder."""
    return split_samples(index, data.split_seed, data.val_fraction, data.test_fraction)


def head_splits(config: NodeConfig) -> dict[str, tuple[list[Sample], np.ndarray]]:
    """(samples, 0/1 labels) per split: local data plus the optional reference set."""
    data = config.data
    if not config.source:
        raise ValueError("node config: source (this node's generator folder name) is not set")
    local = scan_node_folder(data.root, data)
    if config.source not in local.sources:
        raise ValueError(f"{local.root}: no folder for source {config.source!r} (have {', '.join(local.sources)})")
    sets = [split_node_folder(local, data)]
    if config.reference:
        sets.append(split_node_folder(scan_node_folder(config.reference, data), data))
    result = {}
    for split in SPLITS:
        samples = [s for parts in sets for s in parts[split]]
        labels = np.array([1.0 if s.source == config.source else 0.0 for s in samples], dtype=np.float32)
        result[split] = (samples, labels)
    train_labels = result["train"][1]
    if not train_labels.any() or train_labels.all():
        raise ValueError(
            f"node {config.source}: training needs positives and negatives "
            f"(positives {int(train_labels.sum())}, negatives {int((1 - train_labels).sum())}); "
            "add other source folders under data.root or set reference"
        )
    for split in ("val",):
        labels = result[split][1]
        if not labels.any() or labels.all():
            raise ValueError(f"node {config.source}: the {split} split needs both positives and negatives to calibrate")
    return result


def train_head(config: NodeConfig, bundle: Bundle | None = None, *, progress: bool = True) -> HeadTrainingResult:
    """Trains, calibrates and saves this node's head into `state_dir/head`."""
    bundle = bundle or load_configured_bundle(config.backbone, config.public_key, keys=BUNDLE_KEYS)
    spec = bundle.input_spec
    splits = head_splits(config)
    state_dir = Path(config.state_dir)
    run_dir = training.prepare_run_dir(state_dir / state.RUNS_DIR / training.timestamp(), to_dict(config), config.train.seed, exist_ok=True)
    training.set_seed(config.train.seed)
    trunk = networks.build_trunk(bundle.load_primary())
    head_model = networks.build_head(
        spec.image_size, pooling=networks.pooling_for_mode(spec.mode), seed=networks.DEFAULT_SEED + 1000 + config.train.seed
    )
    model = networks.build_attribution_model(trunk, head_model)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (splits[s] for s in SPLITS)
    result = training.fit(
        model, train_x, train_y, val_x, val_y, spec, config.train, run_dir, perturb=config.perturb, progress=progress,
    )
    raw_val = predict_scores(model, val_x, spec)
    calibration = fit_calibration(raw_val, val_y, config.calibration)
    metrics: dict[str, Any] = {
        "source": config.source,
        "counts": {s: {"positives": int(splits[s][1].sum()), "total": len(splits[s][0])} for s in SPLITS},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
        "calibration": calibration.to_dict(),
        "val": {"raw": binary_metrics(val_y, raw_val), "calibrated": binary_metrics(val_y, calibration.apply(raw_val))},
    }
    if test_x and test_y.any() and not test_y.all():
        raw_test = predict_scores(model, test_x, spec)
        metrics["test"] = {
            "raw": binary_metrics(test_y, raw_test),
            "calibrated": binary_metrics(test_y, calibration.apply(raw_test)),
        }
    head = save_head(
        state_dir / state.HEAD_DIR, head_model, source=config.source, bundle=bundle, calibration=calibration,
        threshold=config.threshold, metrics=metrics,
    )
    shown = metrics.get("test", metrics["val"])["calibrated"]
    log.info(
        "head %s: accuracy %.3f F1 %.3f AUC %.3f (calibrated, %s); saved to %s",
        config.source, shown["accuracy"], shown["f1"], shown["roc_auc"], "test" if "test" in metrics else "val",
        state_dir / state.HEAD_DIR,
    )
    return HeadTrainingResult(state_dir / state.HEAD_DIR, head, metrics)


def evaluate_head(
    config: NodeConfig,
    bundle: Bundle | None = None,
    *,
    perturbations: list[str] | tuple[str, ...] = ("clean",),
    out_dir: str | Path | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """One-vs-rest metrics of the stored head (calibrated, and raw under `raw`) on a split of its data."""
    from shared_backbone.experiments.evaluation import evaluate_binary
    from shared_backbone.model.heads import load_head

    bundle = bundle or load_configured_bundle(config.backbone, config.public_key, keys=BUNDLE_KEYS)
    head = load_head(state.head_dir(config), bundle)
    samples, labels = head_splits(config)[split]
    if not samples:
        raise ValueError(f"node {config.source}: the {split} split is empty")
    model = networks.build_attribution_model(networks.build_trunk(bundle.load_primary()), head.model)
    return evaluate_binary(
        model, samples, labels, bundle.input_spec, list(perturbations), out_dir,
        ids=[str(s.path) for s in samples], positive=config.source, negative="rest",
        calibration=head.calibration, threshold=head.threshold,
    )

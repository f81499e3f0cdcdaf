"""A node's head training: verify the bundle, train on the frozen trunk, calibrate, store.

What the head sees is `node.head_data`'s business (the who-sees-what rule): the node's own images
(positives), the coordinator's verified reference set and, in the paper's opt-in shared setting,
other local sources (negatives), plus negatives the node makes itself by re-rendering those images
through random upsamplers. Trunk features are computed once (the trunk is frozen), the head trains
on them with class weighting, early stopping on the class-weighted validation loss, and is then
calibrated on the calib split (own held-out images vs the common calibration negatives), which
neither training nor model selection saw; the calibrated scores of the own held-out images are the
head's conformal reference. The node also fits its typicality model (`model.typicality`) on its own
train-split images only, and scores its own val and calib images (which that fit did not use) as
the typicality reference. The Flower ClientApp calls `train_head` too.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from node import state
from node.config import BUNDLE_KEYS, NodeConfig
from node.head_data import SPLITS, DataAccessError, HeadData, head_data
from shared_backbone.config import to_dict
from shared_backbone.data.datasets import group_of
from shared_backbone.data.negatives import MATCH_SAMPLE, NegativeSettings, make_negatives, matched_settings
from shared_backbone.training import trunk_cache
from shared_backbone.training.fit import FitResult, fit_arrays, prepare_run_dir, set_seed, timestamp
from shared_backbone.training.classification_metrics import binary_metrics
from shared_backbone.model import networks
from shared_backbone.model.bundle import Bundle, load_configured_bundle
from shared_backbone.model.calibration import Calibration, fit_calibration
from shared_backbone.model.heads import Head, load_head, save_head
from shared_backbone.model.typicality import TypicalityModel, fit_typicality

log = logging.getLogger(__name__)

PERTURBED_SPLITS = ("train", "val", "calib")  # a robust head is selected and calibrated on what it will see
# Self-made negatives join every split, calibration included: calibrated against reals alone, a
# head's map learns "anything unlike a real image is mine" and lifts foreign fakes to high scores.
# They are drawn from the same space (families, strength range) on every node, so the negatives
# every head is calibrated against (the common reference set plus such re-renderings) are alike.
SELF_MADE_SPLITS = ("train", "val", "calib", "test")


@dataclass
class HeadTrainingResult:
    head_dir: Path
    head: Head
    metrics: dict[str, Any]


@dataclass
class FeatureSet:
    """One split as the head sees it: trunk features and 1 = own source / 0 = not."""

    x: np.ndarray
    y: np.ndarray
    files: int = 0  # images read from the node's folders and the reference set (before perturbed copies)
    self_made: int = 0  # negatives the node rendered itself
    groups: np.ndarray | None = None  # each positive row's group (photo), where the dataset declares groups


def negative_settings(config: NodeConfig) -> NegativeSettings:
    """The node's negative settings; its source name is mixed into the seed, so two nodes with the
    same config draw different networks (and none draws the same one a benchmark fixes by seed)."""
    n = config.negatives
    seed = int.from_bytes(hashlib.sha256(f"{config.source}/{n.seed + config.train.seed}".encode()).digest()[:4], "big")
    return NegativeSettings(count=n.count, generators=n.generators, strength=tuple(n.strength), seed=seed,
                            families=tuple(n.families), exclude_families=tuple(n.exclude_families))


def _self_made(own: list[np.ndarray], others: list[np.ndarray], settings: NegativeSettings, count: int) -> list[np.ndarray]:
    """Negatives re-rendered from the node's own and the reference images (half each when both exist)."""
    if count <= 0:
        return []
    own_count = count // 2 if others else count
    return make_negatives(own, settings, own_count) + (make_negatives(others, settings, count - own_count) if others else [])


@dataclass
class ImageSet:
    """One split of the head's task as images: positives first, then negatives (1 = own source / 0 = not)."""

    images: list[np.ndarray]
    y: np.ndarray
    files: int
    self_made: int
    groups: np.ndarray | None = None


def image_sets(config: NodeConfig, data: HeadData, spec, splits: tuple[str, ...] = SPLITS) -> dict[str, ImageSet]:
    """Every split's images of the head's task: own images, negatives, self-made negatives, perturbed copies."""
    settings = negative_settings(config)
    train_size = max(len(data.positives["train"]) + len(data.negatives["train"]), 1)
    if config.negatives.match_bandwidth:
        settings = matched_settings(trunk_cache.load_images(data.positives["train"][:MATCH_SAMPLE], spec.image_size), settings)
        log.info("node %s: negatives pre-compensate %.2f px^2 of resampling blur (matched to its own images)",
                 config.source, settings.resampling_blur)
    sets = {}
    for index, split in enumerate(SPLITS):
        if split not in splits:
            continue
        own = trunk_cache.load_images(data.positives[split], spec.image_size)
        others = trunk_cache.load_images(data.negatives[split], spec.image_size)
        made = []
        if split in SELF_MADE_SPLITS:
            count = settings.count if split == "train" else round(settings.count * (len(own) + len(others)) / train_size)
            made = _self_made(own, others, settings, count)
        copies = config.perturb_copies if split in PERTURBED_SPLITS else 0
        positives = trunk_cache.versions(own, config.perturb, copies, config.train.seed + index)
        negatives = trunk_cache.versions(others + made, config.perturb, copies, config.train.seed + 10 + index)
        y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))].astype(np.float32)
        groups = [group_of(sample.path) for sample in data.positives[split]] if data.grouped else None
        sets[split] = ImageSet(positives + negatives, y, files=len(own) + len(others), self_made=len(made),  # images, then copies
                               groups=np.tile(groups, len(positives) // max(len(own), 1)) if groups else None)
    return sets


def feature_sets(config: NodeConfig, data: HeadData, trunk, spec) -> dict[str, FeatureSet]:
    """Trunk features of every split of `image_sets` (computed once: the trunk is frozen)."""
    return {split: FeatureSet(trunk_cache.trunk_features(trunk, part.images, spec), part.y, files=part.files,
                              self_made=part.self_made, groups=part.groups)
            for split, part in image_sets(config, data, spec).items()}


def _check(config: NodeConfig, sets: dict[str, FeatureSet]) -> None:
    for split in ("train", "val", "calib"):
        y = sets[split].y
        if not y.any() or y.all():
            raise DataAccessError(
                f"node {config.source}: the {split} split needs positives and negatives (positives {int(y.sum())}, "
                f"negatives {int((1 - y).sum())}); set `reference` to the coordinator's reference set"
                + (" or give more images" if y.any() else "")
            )


def head_model(config: NodeConfig, spec):
    """A fresh head for this node (or its `init_head`, the paper's retraining)."""
    model = networks.build_head(spec.image_size, pooling=networks.pooling_for_mode(spec.mode),
                                seed=networks.DEFAULT_SEED + 1000 + config.train.seed)
    if config.init_head:  # the paper's retraining: start from an existing head
        model.set_weights(load_head_weights(config.init_head, spec))
    return model


def load_head_weights(directory: str, spec) -> list[np.ndarray]:
    """An existing head's weights (any backbone), for retraining on perturbed data."""
    from shared_backbone.model.heads import HEAD_WEIGHTS, build_head_model, read_head_meta

    meta = read_head_meta(directory)
    model = build_head_model(int(meta["image_size"]), meta.get("pooling", "gap"))
    if int(meta["image_size"]) != spec.image_size:
        raise DataAccessError(f"init_head {directory}: a {meta['image_size']} px head cannot start a {spec.image_size} px one")
    model.load_weights(Path(directory) / HEAD_WEIGHTS)
    return model.get_weights()


def calibrate(model, calib: FeatureSet, method: str) -> tuple[Calibration, np.ndarray]:
    """The calibration map and the conformal reference, both from the calib split; and its raw scores."""
    raw = predict(model, calib.x)
    calibration = fit_calibration(raw, calib.y, method)
    return calibration.with_positives(calibration.apply(raw[calib.y > 0.5]), calib.groups), raw


def own_typicality(sets: dict[str, FeatureSet]) -> tuple[TypicalityModel, np.ndarray, dict[str, Any]]:
    """The typicality model of the node's own train images, its reference (own val + calib images,
    which the fit did not use) and metrics: AUROC of own calib images against the calib negatives."""
    model = fit_typicality(sets["train"].x[sets["train"].y > 0.5])
    reference = np.concatenate([model.score(sets[split].x[sets[split].y > 0.5]) for split in ("val", "calib")])
    calib = sets["calib"]
    scores = model.score(calib.x)
    positives = calib.y > 0.5
    ranks = scipy.stats.rankdata(scores)
    auroc = (ranks[positives].sum() - positives.sum() * (positives.sum() + 1) / 2) / (positives.sum() * (~positives).sum())
    metrics = {"fitted_on": model.fitted_on, "reference": len(reference), "shrinkage": round(model.shrinkage, 4),
               "calib_auroc_own_vs_negatives": float(auroc), "smallest_p_value": 1.0 / (len(reference) + 1)}
    return model, reference, metrics


def predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x.astype(np.float32), batch_size=1024, verbose=0)).reshape(-1).astype(np.float64)


def _metrics(config: NodeConfig, data: HeadData, sets: dict[str, FeatureSet], model, calibration: Calibration,
             raw_calib: np.ndarray, fit: FitResult) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "source": config.source,
        "data_access": data.report,
        "counts": {s: {"positives": len(data.positives[s]), "total": sets[s].files, "self_made_negatives": sets[s].self_made,
                       "with_perturbed_copies": len(sets[s].y)} for s in SPLITS},
        "self_made_negatives": negative_settings(config).count,
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "train_seconds": round(fit.seconds, 1),
        "calibration": {k: v for k, v in calibration.to_dict().items() if k not in ("positive_scores", "typicality_scores")},
        "val": {"raw": binary_metrics(sets["val"].y, predict(model, sets["val"].x))},
        "calib": {"raw": binary_metrics(sets["calib"].y, raw_calib),
                  "calibrated": binary_metrics(sets["calib"].y, calibration.apply(raw_calib))},
    }
    test = sets["test"]  # own test images, then negatives from files, then self-made ones (no perturbed copies)
    if test.y[: test.files].any() and not test.y[: test.files].all():
        raw_test = predict(model, test.x)
        for key, count in (("test", test.files), ("test_with_self_made", len(test.y))):
            y, raw = test.y[:count], raw_test[:count]
            metrics[key] = {"raw": binary_metrics(y, raw), "calibrated": binary_metrics(y, calibration.apply(raw))}
    return metrics


def train_head(config: NodeConfig, bundle: Bundle | None = None, *, progress: bool = True,
               announced_reference_digest: str = "") -> HeadTrainingResult:
    """Trains, calibrates and saves this node's head into `state_dir/head`."""
    bundle = bundle or load_configured_bundle(config.backbone, config.public_key, keys=BUNDLE_KEYS)
    spec = bundle.input_spec
    data = head_data(config, bundle, announced_reference_digest=announced_reference_digest)
    if not data.positives["train"] or not data.negatives["train"]:
        raise DataAccessError(
            f"node {config.source}: training needs positives and negatives (positives {len(data.positives['train'])}, "
            f"negatives {len(data.negatives['train'])} besides self-made ones); set `reference` to the coordinator's "
            "reference set (or keep public real images in a real source folder under data.root)"
        )
    state_dir = Path(config.state_dir)
    run_dir = prepare_run_dir(state_dir / state.RUNS_DIR / timestamp(), to_dict(config), config.train.seed, exist_ok=True)
    set_seed(config.train.seed)
    trunk = networks.build_trunk(bundle.load_primary())
    sets = feature_sets(config, data, trunk, spec)
    _check(config, sets)
    model = head_model(config, spec)
    fit = fit_arrays(model, sets["train"].x, sets["train"].y, sets["val"].x, sets["val"].y, config.train, run_dir,
                              progress=progress)
    calibration, raw_calib = calibrate(model, sets["calib"], config.calibration)
    typicality, reference, typicality_metrics = own_typicality(sets)
    calibration = calibration.with_typicality(reference)
    metrics = _metrics(config, data, sets, model, calibration, raw_calib, fit)
    metrics["typicality"] = typicality_metrics
    head = save_head(state_dir / state.HEAD_DIR, model, source=config.source, bundle=bundle, calibration=calibration,
                     threshold=config.threshold, metrics=metrics, typicality=typicality)
    shown = metrics.get("test", metrics["calib"])["calibrated"]
    log.info("head %s (%s access): accuracy %.3f F1 %.3f AUC %.3f (calibrated, %s); saved to %s", config.source,
             config.access, shown["accuracy"], shown["f1"], shown["roc_auc"], "test" if "test" in metrics else "calib",
             state_dir / state.HEAD_DIR)
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
    from shared_backbone.training.evaluation import evaluate_binary

    bundle = bundle or load_configured_bundle(config.backbone, config.public_key, keys=BUNDLE_KEYS)
    head = load_head(state.head_dir(config), bundle)
    data = head_data(config, bundle)
    samples = data.positives[split] + data.negatives[split]
    if not samples:
        raise DataAccessError(f"node {config.source}: the {split} split is empty")
    labels = np.r_[np.ones(len(data.positives[split])), np.zeros(len(data.negatives[split]))].astype(np.float32)
    model = networks.build_attribution_model(networks.build_trunk(bundle.load_primary()), head.model)
    return evaluate_binary(
        model, samples, labels, bundle.input_spec, list(perturbations), out_dir,
        ids=[str(s.path) for s in samples], positive=config.source, negative="rest",
        calibration=head.calibration, threshold=head.threshold,
    )

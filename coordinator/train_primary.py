"""Training the primary (real vs. fake) module on the coordinator's dataset.

The run folder is what `publish` turns into a bundle: `primary.weights.h5`, `input.json`
(size, mode), `normstats/` for DCT runs, `metrics.json` (validation and test), plus the
training logs written by `shared_backbone.training.fit`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.config import CoordinatorConfig
from coordinator.pretext_generators import PRETEXT_PREFIX, generative, pretext_samples
from shared_backbone.config import to_dict
from shared_backbone.data.datasets import REAL_CLASS, DatasetIndex, Sample, load_split
from shared_backbone.training.fit import MULTICLASS, detection_labels, fit, input_spec, prepare_run_dir, set_seed, timestamp
from shared_backbone.training.evaluation import predict_scores
from shared_backbone.training.classification_metrics import binary_metrics
from shared_backbone.model import networks
from shared_backbone.model.preprocessing import InputSpec, Normstats

log = logging.getLogger(__name__)

PRIMARY_WEIGHTS = "primary.weights.h5"
INPUT_FILE = "input.json"
METRICS_FILE = "metrics.json"
NORMSTATS_DIR = "normstats"
Pretext = tuple[list[str], dict[str, list[Sample]]]  # (class names, per split the pretext generators' images)


@dataclass
class PrimaryTrainingResult:
    run_dir: Path
    model: Any
    metrics: dict[str, Any]
    spec: InputSpec


def evaluate_detector(model, index: DatasetIndex, samples: list[Sample], spec: InputSpec, **kwargs) -> dict[str, Any]:
    """Binary metrics (1 = fake) of a detector on a list of samples."""
    scores = predict_scores(model, samples, spec, **kwargs)
    metrics = binary_metrics(detection_labels(index, samples), scores)
    metrics["score_std"] = float(scores.std())
    return metrics


def read_run(run_dir: str | Path) -> tuple[Any, InputSpec, dict[str, Any]]:
    """(primary model, input spec, metrics) of a finished training run."""
    run_dir = Path(run_dir)
    input_path = run_dir / INPUT_FILE
    if not input_path.is_file() or not (run_dir / PRIMARY_WEIGHTS).is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished primary training run ({INPUT_FILE} or {PRIMARY_WEIGHTS} missing)")
    spec_data = json.loads(input_path.read_text())
    normstats = Normstats.load(run_dir / NORMSTATS_DIR) if spec_data["mode"] == "dct" else None
    spec = InputSpec(int(spec_data["image_size"]), spec_data["mode"], normstats)
    model = networks.build_primary(spec.image_size, spec.mode)
    model.load_weights(run_dir / PRIMARY_WEIGHTS)
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return model, spec, metrics


def initial_model(path: str | Path) -> tuple[Any, InputSpec]:
    """(primary module, input spec) of a finished run or a bundle, to retrain (the paper's robustness retraining).

    The input spec (size, mode, DCT normstats) is kept: the retrained module reads what the
    original read.
    """
    path = Path(path)
    if (path / INPUT_FILE).is_file():
        model, spec, _ = read_run(path)
        return model, spec
    from shared_backbone.model.bundle import load_bundle

    bundle = load_bundle(path, None)  # the coordinator's own bundle: file digests checked
    return bundle.load_primary(), bundle.input_spec


def source_labels(index: DatasetIndex, samples: list[Sample], classes: list[str], pretext: frozenset[str] = frozenset()) -> np.ndarray:
    """Class ids of `samples` in `classes`: a dataset image by its class (arch-level grouping applied),
    an image of one of the `pretext` classes by that class."""
    position = {name: i for i, name in enumerate(classes)}
    return np.array([position[s.source if s.source in pretext else index.class_of(s.source)] for s in samples], dtype=np.float32)


def coordinator_pretext(index: DatasetIndex, splits: dict[str, list[Sample]], spec: InputSpec, config: CoordinatorConfig,
                        out: Path) -> Pretext | None:
    """(class names, per split samples) of the coordinator's pretext generators; None without `pretext.generators`."""
    if not config.pretext.generators:
        return None
    taken = sorted(s for s in index.sources if s.startswith(PRETEXT_PREFIX))
    if taken:
        raise ValueError(f"{index.root}: source(s) {', '.join(taken)} clash with the pretext generators' names; rename them")
    reals = {name: [s for s in splits[name] if index.is_real(s.source)] for name in ("train", "val")}
    return pretext_samples(reals, spec.image_size, config.pretext, config.train.seed, out)


def pretrain_trunk(model, index: DatasetIndex, splits: dict[str, list[Sample]], spec: InputSpec,
                   config: CoordinatorConfig, run_dir: Path, pretext: Pretext | None, *,
                   progress: bool) -> list[str]:
    """Trains the trunk to tell the coordinator's sources apart, then freezes it for the detector's tail.

    A detector trained only on real vs fake needs no fingerprint beyond "fake", and its trunk then
    carries little that separates one generator from another: every head reads these features.
    `pretext` (names, samples): random generators of the coordinator's own that join the classes
    (`coordinator/pretext_generators.py`). Returns the classes it told apart.
    """
    run_dir = prepare_run_dir(run_dir, to_dict(config), config.train.seed, exist_ok=True)
    names, extra = pretext or ([], {"train": [], "val": []})
    classes = [REAL_CLASS, *index.fake_classes, *names]
    train, val = list(splits["train"]) + extra["train"], list(splits["val"]) + extra["val"]
    labels = {name: source_labels(index, part, classes, frozenset(names)) for name, part in (("train", train), ("val", val))}
    classifier = networks.build_source_classifier(model, len(classes), seed=networks.DEFAULT_SEED + 500 + config.train.seed)
    log.info("source-aware trunk: %d classes (%s)", len(classes), ", ".join(classes))
    fit(classifier, train, labels["train"], val, labels["val"], spec, config.train, run_dir,
        task=MULTICLASS, num_classes=len(classes), perturb=config.perturb, progress=progress)
    networks.set_trunk_trainable(model, False)
    return classes


def refit_tail(model, index: DatasetIndex, splits: dict[str, list[Sample]], spec: InputSpec, config: CoordinatorConfig) -> None:
    """Retrains the detector's tail on the coordinator's data (`splits`, `config.train`) over the frozen
    trunk, e.g. after federated fine-tuning moved the trunk. The tail starts from its current weights."""
    networks.set_trunk_trainable(model, False)
    run_dir = prepare_run_dir(Path(config.run_dir) / "tail-refit" / timestamp(), to_dict(config), config.train.seed,
                              exist_ok=True)
    train, val = splits["train"], splits["val"]
    fit(model, train, detection_labels(index, train), val, detection_labels(index, val), spec, config.train, run_dir,
        perturb=config.perturb, progress=False)
    networks.set_trunk_trainable(model, True)


def train_primary(config: CoordinatorConfig, *, progress: bool = True) -> PrimaryTrainingResult:
    """Trains, evaluates (val + test) and saves the primary module into `config.run_dir`."""
    run_dir = prepare_run_dir(config.run_dir, to_dict(config), config.train.seed)
    index, splits = load_split(config.data)
    if not index.real_sources or len(index.real_sources) == len(index.sources):
        raise ValueError(f"{index.root}: detection needs real and fake sources (real: {sorted(index.real_sources)})")
    set_seed(config.train.seed)
    if config.init_from:
        model, spec = initial_model(config.init_from)
        log.info("retraining the primary module of %s", config.init_from)
    else:
        spec = input_spec(config.data, splits["train"])
        model = networks.build_primary(spec.image_size, spec.mode, seed=networks.DEFAULT_SEED + config.train.seed)
    pretext = coordinator_pretext(index, splits, spec, config, run_dir / "pretext")
    trunk_classes: list[str] = []
    if config.source_aware_trunk:
        trunk_classes = pretrain_trunk(model, index, splits, spec, config, run_dir / "trunk",
                                       pretext if config.pretext.trunk else None, progress=progress)
    train, val = splits["train"], splits["val"]
    if pretext and config.pretext.detector:
        train, val = train + generative(pretext[1]["train"]), val + generative(pretext[1]["val"])
        log.info("detector: %d pretext generators' images among its fakes", len(train) - len(splits["train"]))
    result = fit(model, train, detection_labels(index, train), val, detection_labels(index, val),
                 spec, config.train, run_dir, perturb=config.perturb, progress=progress)
    networks.set_trunk_trainable(model, True)
    model.save_weights(run_dir / PRIMARY_WEIGHTS)
    if spec.normstats is not None:
        spec.normstats.save(run_dir / NORMSTATS_DIR)
    (run_dir / INPUT_FILE).write_text(json.dumps({"image_size": spec.image_size, "mode": spec.mode}))
    metrics: dict[str, Any] = {
        "trained_on": {"detector": sorted({s.source for s in train}), "trunk": trunk_classes},  # the manifest says what we saw
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": round(result.seconds, 1),
        "val": evaluate_detector(model, index, splits["val"], spec),
    }
    if splits["test"]:
        metrics["test"] = evaluate_detector(model, index, splits["test"], spec)
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    log.info(
        "primary module: val accuracy %.3f AUC %.3f; saved to %s",
        metrics["val"]["accuracy"], metrics["val"]["roc_auc"], run_dir,
    )
    return PrimaryTrainingResult(run_dir, model, metrics, spec)

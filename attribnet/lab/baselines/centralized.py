"""Centralized baselines on the same splits as the paper's method: gdaconv, postpool, dctlinear.

Each baseline is trained on the whole dataset (it sees every source, unlike a node) for one task:
`detection` (real vs. fake), `ovr` (one source vs. rest) or `multiclass` (real + every fake class),
then evaluated on the test split clean and at fixed perturbations. Multiclass results include
`fake_argmax`: on fake images only, the argmax over the fake classes, the number comparable with the
heads' argmax.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_backbone.config import DataConfig, PerturbConfig, TrainConfig, to_dict
from shared_backbone.data.datasets import REAL_CLASS, DatasetIndex, Sample, load_split
from shared_backbone.training.fit import (
    BINARY,
    MULTICLASS,
    class_weights,
    detection_labels,
    fit,
    input_spec,
    prepare_run_dir,
    set_seed,
)
from shared_backbone.training.evaluation import parse_perturbation, predict_scores, sample_ids
from shared_backbone.training.classification_metrics import binary_metrics, multiclass_metrics
from shared_backbone.training.reports import write_binary_report, write_json, write_multiclass_report
from shared_backbone.model import networks

log = logging.getLogger(__name__)

MODELS = ("gdaconv", "postpool", "dctlinear")
DEFAULT_PERTURBATIONS = ("clean", "jpeg75", "blur1")


@dataclass
class BaselineConfig:
    """`attribnet bench baseline`: gdaconv / postpool for detection, ovr or multiclass."""

    model: str = "gdaconv"
    task: str = "multiclass"
    positive_source: str = ""  # for task=ovr
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    out: str = "runs/baseline"


@dataclass
class BaselineResult:
    model: str
    task: str
    classes: list[str]
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # perturbation name -> metrics
    files: dict[str, Any] = field(default_factory=dict)


def task_labels(index: DatasetIndex, samples: list[Sample], task: str, positive_source: str = "") -> tuple[np.ndarray, list[str]]:
    """Integer labels and class names for a task (detection: real=0/fake=1; ovr: rest=0/source=1)."""
    if task == "detection":
        return detection_labels(index, samples), [REAL_CLASS, "fake"]
    if task == "ovr":
        if not positive_source:
            raise ValueError("task ovr needs positive_source (--source)")
        if positive_source not in {index.class_of(s) for s in index.sources}:
            raise ValueError(f"{index.root}: no source {positive_source!r} for the one-vs-rest task")
        labels = np.array([1.0 if index.class_of(s.source) == positive_source else 0.0 for s in samples], dtype=np.float32)
        return labels, ["rest", positive_source]
    if task == "multiclass":
        classes = [REAL_CLASS, *index.fake_classes]
        position = {name: i for i, name in enumerate(classes)}
        return np.array([position[index.class_of(s.source)] for s in samples], dtype=np.int64), classes
    raise ValueError(f"unknown task {task!r}; expected one of {networks.TASKS}")


def score_metrics(task: str, labels: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, Any]:
    if task != "multiclass":
        return binary_metrics(labels, scores)
    metrics = multiclass_metrics(labels, scores.argmax(axis=1), classes, scores)
    fake = labels > 0
    if fake.any():
        fake_scores = scores[fake][:, 1:]
        metrics["fake_argmax"] = multiclass_metrics(labels[fake] - 1, fake_scores.argmax(axis=1), classes[1:], fake_scores)
    return metrics


def _write_reports(run_dir: Path, name: str, task: str, ids: list[str], labels, scores, classes, metrics) -> dict[str, str]:
    if task != "multiclass":
        return write_binary_report(
            run_dir, ids, labels, scores, metrics, name=name, title=f"{run_dir.name} {name}",
            positive=classes[1], negative=classes[0],
        )
    return write_multiclass_report(
        run_dir, ids, classes, labels, scores.argmax(axis=1), metrics, name=name, title=f"{run_dir.name} {name}", scores=scores,
    )


def run_baseline(
    config: BaselineConfig,
    *,
    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS,
    progress: bool = True,
) -> BaselineResult:
    """Trains one baseline on the train split and evaluates it on the test split per perturbation."""
    if config.model not in MODELS:
        raise ValueError(f"unknown baseline {config.model!r}; expected one of {MODELS}")
    settings = {name: parse_perturbation(name) for name in perturbations}
    run_dir = prepare_run_dir(config.out, to_dict(config), config.train.seed)
    index, splits = load_split(config.data)
    labels = {split: task_labels(index, samples, config.task, config.positive_source)[0] for split, samples in splits.items()}
    classes = task_labels(index, splits["train"][:1], config.task, config.positive_source)[1]
    test = splits["test"]
    ids = sample_ids(test, index.root)
    began = time.monotonic()
    if config.model == "dctlinear":
        scores_for = _dctlinear_scorer(config, index, splits, labels, classes)
    else:
        scores_for = _keras_scorer(config, splits, labels, classes, run_dir, progress)
    result = BaselineResult(config.model, config.task, classes, run_dir)
    result.metrics["train_seconds"] = round(time.monotonic() - began, 1)
    for name, setting in settings.items():
        scores, kept = scores_for(test, setting)
        truth = labels["test"][kept]
        metrics = score_metrics(config.task, truth, scores, classes)
        result.metrics[name] = metrics
        result.files[name] = _write_reports(run_dir, name, config.task, [ids[i] for i in kept], truth, scores, classes, metrics)
        shown = metrics["accuracy"]
        log.info("%s %s on %s test images: accuracy %.3f", config.model, config.task, name, shown)
    write_json(run_dir / "metrics.json", {"model": config.model, "task": config.task, "classes": classes, **result.metrics})
    return result


def _keras_scorer(config: BaselineConfig, splits, labels, classes, run_dir: Path, progress: bool):
    spec = input_spec(config.data, splits["train"])
    if spec.normstats is not None:
        spec.normstats.save(run_dir / "normstats")
    multiclass = config.task == "multiclass"
    set_seed(config.train.seed)
    model = networks.build_baseline(
        config.model, spec.image_size, spec.mode, config.task, len(classes) if multiclass else 1,
        seed=networks.DEFAULT_SEED + config.train.seed,
    )
    fit(
        model, splits["train"], labels["train"], splits["val"], labels["val"], spec, config.train, run_dir,
        task=MULTICLASS if multiclass else BINARY, num_classes=len(classes) if multiclass else 2,
        perturb=config.perturb, progress=progress,
    )
    model.save_weights(run_dir / "model.weights.h5")

    def scores_for(samples: list[Sample], setting) -> tuple[np.ndarray, np.ndarray]:
        return predict_scores(model, samples, spec, perturbation=setting), np.arange(len(samples))

    return scores_for


def _dctlinear_scorer(config: BaselineConfig, index: DatasetIndex, splits, labels, classes):
    """Frank et al.'s DCT regression: fitted on train+val (it has no early stopping to feed); with
    `perturb.kinds`, on each image clean and once through the perturbation pipeline."""
    from shared_backbone.data.perturbations import perturb_fixed
    from attribnet.lab.baselines import dct_regression

    size = config.data.image_size
    fit_samples = splits["train"] + splits["val"]
    fit_labels = np.concatenate([labels["train"], labels["val"]]).astype(np.int64)
    paths = [s.path for s in fit_samples]
    features, kept = dct_regression.dct_features(paths, size, seed=config.train.seed)
    fit_labels = fit_labels[kept]
    if config.perturb.kinds:  # robust training: each image clean and once perturbed by the pipeline
        from shared_backbone.data.perturbations import perturb_randomly

        perturbed, again = dct_regression.dct_features(
            paths, size, perturb=lambda rgb, rng: perturb_randomly(rgb, config.perturb, rng), seed=config.train.seed + 1
        )
        features, fit_labels = np.concatenate([features, perturbed]), np.concatenate([fit_labels, fit_labels[np.searchsorted(kept, again)]])
    num_classes = len(classes)
    weights = None
    if config.train.class_weighting:
        by_class = class_weights(fit_labels, num_classes)
        weights = np.array([by_class[int(c)] for c in fit_labels])
    model = dct_regression.fit(features, fit_labels, num_classes, sample_weights=weights)

    def scores_for(samples: list[Sample], setting) -> tuple[np.ndarray, np.ndarray]:
        perturb = None
        if setting is not None:
            kind, value = setting
            perturb = lambda rgb, rng: perturb_fixed(rgb, kind, value, rng)  # noqa: E731
        test_features, test_kept = dct_regression.dct_features([s.path for s in samples], size, perturb=perturb)
        probabilities = dct_regression.predict_proba(model, test_features)
        return (probabilities if config.task == "multiclass" else probabilities[:, 1]), test_kept

    return scores_for

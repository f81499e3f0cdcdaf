"""One seed's numbers: every method on every test set, the open set and the late joiners."""

from __future__ import annotations

from typing import Any

from attribnet.bench.accuracy import evaluate as ev
from attribnet.bench.accuracy.bench_data import BenchData
from attribnet.bench.accuracy.train import CLEAN, LATE, ROBUST, SHARED, STRICT, SeedModels
from shared_backbone.data.datasets import group_of
from shared_backbone.model.rule import RuleSettings

BASELINE_KEYS = {"gdaconv": "gdaconv", "postpool": "postpool", "dctlinear": "dct_linear"}


def _baseline_name(perturbation: str, value: float | None) -> str:
    return "clean" if perturbation == ev.CLEAN else f"{perturbation}:{value}"


def test_set_metrics(models: SeedModels, bench: BenchData, images: ev.TestImages, training: str, settings: RuleSettings) -> dict[str, Any]:
    """{perturbation: {method: accuracy}} of the clean- or robust-trained models on real + node images."""
    truth = ev.truths(bench.index, images.samples)
    bundle = models.bundles[ROBUST if training == ROBUST else CLEAN]
    table: dict[str, Any] = {}
    for name in images.names:
        outputs = ev.run_backbone(bundle, images.images(name))
        strict = ev.answers(outputs, models.heads[f"{STRICT}-{training}"], settings)
        row = {
            "detection": ev.detection_accuracy(outputs, truth, settings.fake_threshold),
            "heads_raw": ev.accuracy(ev.closed_set_answers(strict, settings.fake_threshold, rank_by="raw"), truth),
            "heads_calibrated": ev.accuracy(ev.closed_set_answers(strict, settings.fake_threshold), truth),
        }
        if f"{SHARED}-{training}" in models.heads:
            shared = ev.answers(outputs, models.heads[f"{SHARED}-{training}"], settings)
            row["heads_shared"] = ev.accuracy(ev.closed_set_answers(shared, settings.fake_threshold), truth)
        for model, key in BASELINE_KEYS.items():
            result = models.baselines.get(f"{model}-{training}")
            if result is not None:
                row[key] = result.metrics[_baseline_name(name, images.perturbations.get(name))]["accuracy"]
        if models.templates and training == CLEAN:
            row.update({key: ev.accuracy(answers, truth) for key, answers in
                        ev.template_rows(models.templates, images.images(name), outputs, strict, settings.fake_threshold,
                                           bench.index).items()})
        table[name] = row
    return table


def open_set(models: SeedModels, bench: BenchData, images: ev.TestImages, settings: RuleSettings) -> dict[str, Any]:
    """Clean-trained strict heads on known images and on generators no training set held."""
    outputs = ev.run_backbone(models.bundles[CLEAN], images.images(ev.CLEAN))
    results = ev.answers(outputs, models.heads[f"{STRICT}-{CLEAN}"], settings)
    groups = [group_of(sample.path) for sample in images.samples] if bench.index.group_splits else None
    return ev.open_set_metrics(results, ev.truths(bench.index, images.samples), bench.roles.nodes, settings, groups)


def late_join(models: SeedModels, bench: BenchData, images: ev.TestImages, settings: RuleSettings) -> dict[str, Any]:
    """Founding vs late nodes on the detector that never saw the late ones (clean test images)."""
    outputs = ev.run_backbone(models.bundles[LATE], images.images(ev.CLEAN))
    truth = ev.truths(bench.index, images.samples)
    predicted = ev.closed_set_answers(ev.answers(outputs, models.heads[LATE], settings), settings.fake_threshold)
    recall = ev.per_source_recall(predicted, truth, bench.roles.nodes)
    detected = {s: float((outputs.fake[[t == s for t in truth]] >= settings.fake_threshold).mean()) for s in bench.roles.nodes}
    mean = lambda sources: sum(recall[s] for s in sources) / len(sources)  # noqa: E731
    return {
        "joined": list(bench.roles.late), "founding": bench.founding,
        "joined_accuracy": mean(bench.roles.late), "founding_accuracy": mean(bench.founding),
        "per_source_accuracy": recall, "per_source_detected": detected,
    }


def per_source(models: SeedModels, bench: BenchData, images: ev.TestImages, settings: RuleSettings) -> dict[str, dict[str, float]]:
    """{method: {node: accuracy on its clean test images}} of the clean-trained strict heads and baselines."""
    truth = ev.truths(bench.index, images.samples)
    outputs = ev.run_backbone(models.bundles[CLEAN], images.images(ev.CLEAN))
    strict = ev.answers(outputs, models.heads[f"{STRICT}-{CLEAN}"], settings)
    table = {
        "heads_raw": ev.per_source_recall(ev.closed_set_answers(strict, settings.fake_threshold, rank_by="raw"), truth, bench.roles.nodes),
        "heads_calibrated": ev.per_source_recall(ev.closed_set_answers(strict, settings.fake_threshold), truth, bench.roles.nodes),
    }
    for model, key in BASELINE_KEYS.items():
        result = models.baselines.get(f"{model}-{CLEAN}")
        if result is not None:
            classes = result.metrics["clean"]["per_class"]
            table[key] = {s: classes[bench.index.class_of(s)]["recall"] for s in bench.roles.nodes}
    if models.templates:
        table.update({key: ev.per_source_recall(answers, truth, bench.roles.nodes) for key, answers in
                      ev.template_rows(models.templates, images.images(ev.CLEAN), outputs, strict, settings.fake_threshold,
                                      bench.index).items()})
    return table


def seed_metrics(models: SeedModels, bench: BenchData, known: ev.TestImages, everything: ev.TestImages,
                 settings: RuleSettings) -> dict[str, Any]:
    """The founding setting's numbers; robust-trained and late-join ones when those models were trained."""
    metrics = {
        "clean_trained": test_set_metrics(models, bench, known, CLEAN, settings),
        "per_source": per_source(models, bench, known, settings),
        "open_set": open_set(models, bench, everything, settings),
        "train_seconds": models.seconds,
    }
    if ROBUST in models.bundles:
        metrics["robust_trained"] = test_set_metrics(models, bench, known, ROBUST, settings)
    if LATE in models.bundles:
        metrics["late_join"] = late_join(models, bench, known, settings)
    return metrics

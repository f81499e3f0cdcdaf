"""Running trained models over a test split: clean or at one fixed perturbation setting.

Test-time perturbations are deterministic (a fixed kind and value, e.g. JPEG q75 or blur
sigma 1, with a per-image seeded rng), so two evaluations of the same models give the same numbers.
Everything here returns plain arrays and metric dicts; reports.py turns them into files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shared_backbone.config import DataConfig
from shared_backbone.data.datasets import DatasetIndex, Sample, load_split
from shared_backbone.training.classification_metrics import binary_metrics, multiclass_metrics
from shared_backbone.training.reports import write_binary_report, write_json, write_multiclass_report
from shared_backbone.model.attributor import OfflineAttributor
from shared_backbone.model.bundle import Bundle
from shared_backbone.model.heads import load_head
from shared_backbone.model.preprocessing import InputSpec, load_image, to_model_input
from shared_backbone.model.rule import AMBIGUOUS, REAL, UNKNOWN, closed_set

EVAL_BATCH = 128
# name -> (kind, value) for perturbations.perturb_fixed; None = clean.
FIXED_PERTURBATIONS: dict[str, tuple[str, float] | None] = {
    "clean": None,
    "jpeg75": ("jpeg", 75),
    "blur1": ("blur", 1.0),
}


def parse_perturbation(name: str) -> tuple[str, float] | None:
    """`clean`, a named setting (`jpeg75`, `blur1`) or `KIND:VALUE` (e.g. `noise:0.05`)."""
    if name in FIXED_PERTURBATIONS:
        return FIXED_PERTURBATIONS[name]
    kind, sep, value = name.partition(":")
    if not sep:
        raise ValueError(f"unknown perturbation {name!r}; use {', '.join(FIXED_PERTURBATIONS)} or KIND:VALUE (e.g. noise:0.05)")
    try:
        return kind, float(value)
    except ValueError:
        raise ValueError(f"perturbation {name!r}: value {value!r} is not a number") from None


def iter_inputs(
    samples: list[Sample],
    spec: InputSpec,
    *,
    perturbation: tuple[str, float] | None = None,
    batch_size: int = EVAL_BATCH,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """Model-input batches in sample order; a file that cannot be read is an error naming it."""
    if perturbation is not None:
        from shared_backbone.data.perturbations import image_rng, perturb_fixed
    for start in range(0, len(samples), batch_size):
        batch = []
        for i, sample in enumerate(samples[start : start + batch_size], start):
            try:
                rgb = load_image(sample.path, spec.image_size)
            except (ValueError, OSError) as exc:
                raise ValueError(f"test image {i} ({sample.path}): {exc}") from None
            if perturbation is not None:
                kind, value = perturbation
                rgb = perturb_fixed(rgb, kind, value, image_rng(sample.path, seed))
            batch.append(to_model_input(rgb, spec))
        yield np.stack(batch).astype(np.float32)


def predict_scores(model, samples: list[Sample], spec: InputSpec, **kwargs) -> np.ndarray:
    """Model outputs for every sample: (N,) for a sigmoid output, (N, K) for softmax."""
    outputs = [np.asarray(model(batch, training=False)) for batch in iter_inputs(samples, spec, **kwargs)]
    scores = np.concatenate(outputs).astype(np.float64)
    return scores.reshape(-1) if scores.shape[-1] == 1 else scores


@dataclass
class AttributionEvaluation:
    """Per-image results of bundle + heads on a test split, and their metrics."""

    classes: list[str]  # `real` first, then head sources (sorted)
    true: np.ndarray  # index into classes
    predicted: np.ndarray  # index into classes + [unknown] (open set)
    closed_predicted: np.ndarray  # no unknown rejection
    fake_scores: np.ndarray
    raw: np.ndarray  # (N, heads)
    calibrated: np.ndarray  # (N, heads)
    metrics: dict[str, Any]
    p_values: np.ndarray | None = None  # (N, heads): conformal p-values (NaN for a head without a reference)
    prediction_sets: list[list[str]] = field(default_factory=list)  # per image: sources with p-value > alpha

    def answer_columns(self) -> dict[str, list[Any]]:
        """Per-image columns a person reads beside an open-set answer: the prediction set and p-values."""
        columns: dict[str, list[Any]] = {"prediction_set": ["+".join(kept) for kept in self.prediction_sets]}
        if self.p_values is not None:
            columns.update({f"p_{s}": [float(v) for v in self.p_values[:, j]] for j, s in enumerate(self.classes[1:])})
        return columns


def evaluate_attribution(
    attributor: OfflineAttributor,
    index: DatasetIndex,
    samples: list[Sample],
    *,
    perturbation: tuple[str, float] | None = None,
) -> AttributionEvaluation:
    """Multiclass attribution of bundle + all heads, the paper's way and open-set.

    - `multiclass`: closed set over real + sources: primary decides real/fake, argmax of
      calibrated head scores decides the source (no unknown rejection).
    - `open_set`: the full rule (`unknown` / `ambiguous` count as wrong).
    - `fake_argmax` / `fake_argmax_raw`: among fake test images only, argmax of calibrated /
      raw head scores (the heads' own attribution, independent of the detector).
    - `detection`: the primary module on the same images.
    - `typicality_coverage`: among fake test images whose source's head has a typicality
      reference, the share its own head finds typical (p-value above `typicality_alpha`;
      conformal: about 1 - typicality_alpha).
    """
    sources = sorted(head.source for head in attributor.heads)
    classes = [REAL, *sources]
    position = {name: i for i, name in enumerate(classes)}
    unknown_index = len(classes)
    known = [s for s in samples if index.class_of(s.source) in position]
    if len(known) < len(samples):
        missing = sorted({index.class_of(s.source) for s in samples} - set(position))
        raise ValueError(f"no head for test source(s) {', '.join(missing)}; train one per source first")
    results = []
    for batch in iter_inputs(known, attributor.spec, perturbation=perturbation):
        results.extend(attributor.attribute(batch))
    true = np.array([position[index.class_of(s.source)] for s in known])
    fake_scores = np.array([r.fake_score for r in results])
    raw = np.array([[r.raw[s] for s in sources] for r in results])
    calibrated = np.array([[r.calibrated[s] for s in sources] for r in results])
    extra = {UNKNOWN: unknown_index, AMBIGUOUS: unknown_index + 1}  # no class: count as wrong
    predicted = np.array([position.get(r.attribution, extra.get(r.attribution, unknown_index)) for r in results])
    closed = np.array([  # the closed-set rule answers a class or, for an exact tie, ambiguous
        position.get(closed_set(r.fake_score, r.ranking(attributor.settings.rank_by), attributor.settings.fake_threshold).attribution,
                     unknown_index)
        for r in results])
    is_fake = true > 0
    metrics: dict[str, Any] = {
        "n": int(len(known)),
        "perturbation": list(perturbation) if perturbation else None,
        "detection": binary_metrics(is_fake, fake_scores, attributor.settings.fake_threshold),
        "multiclass": multiclass_metrics(true, closed, classes),
        "open_set": multiclass_metrics(true, predicted, classes),
    }
    if is_fake.any():
        fake_true = true[is_fake] - 1
        metrics["fake_argmax"] = multiclass_metrics(fake_true, calibrated[is_fake].argmax(axis=1), sources, calibrated[is_fake])
        metrics["fake_argmax_raw"] = multiclass_metrics(fake_true, raw[is_fake].argmax(axis=1), sources, raw[is_fake])
        metrics["ovr"] = {s: binary_metrics(true == position[s], calibrated[:, j], 0.5) for j, s in enumerate(sources)}
        coverage = typicality_coverage(results, [classes[t] for t in true], attributor.settings.typicality_alpha)
        if coverage:
            metrics["typicality_coverage"] = coverage
    p_values = np.array([[r.p_values.get(s, np.nan) for s in sources] for r in results])
    return AttributionEvaluation(classes, true, predicted, closed, fake_scores, raw, calibrated, metrics,
                                 p_values, [list(r.prediction_set) for r in results])


def typicality_coverage(results: list, truth: list[str], typicality_alpha: float) -> dict[str, Any]:
    """Among fake images whose own head has a typicality reference, the share it finds typical
    (conformal: about 1 - typicality_alpha); empty when no such image."""
    own_typical = [r.typicality_p_values[t] > typicality_alpha for r, t in zip(results, truth)
                   if t != REAL and t in r.typicality_p_values]
    if not own_typical:
        return {}
    return {"rate": float(np.mean(own_typical)), "n": len(own_typical), "typicality_alpha": typicality_alpha}


def sample_ids(samples: list[Sample], root: Path) -> list[str]:
    return [str(Path(s.path).relative_to(root)) if Path(s.path).is_relative_to(root) else str(s.path) for s in samples]


def evaluate_binary(
    model,
    samples: list[Sample],
    labels: np.ndarray,
    spec: InputSpec,
    perturbations: list[str],
    out_dir: str | Path | None,
    *,
    ids: list[str],
    positive: str = "fake",
    negative: str = "real",
    calibration=None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """A sigmoid model (detector or trunk+head) per perturbation: metrics, and report files when out_dir is set.

    With a `calibration`, metrics are of the calibrated score; the raw score's metrics sit under `raw`.
    """
    settings = {name: parse_perturbation(name) for name in perturbations}  # fail before any work
    results: dict[str, Any] = {}
    for name, setting in settings.items():
        raw = predict_scores(model, samples, spec, perturbation=setting)
        scores = calibration.apply(raw) if calibration is not None else raw
        metrics = binary_metrics(labels, scores, threshold)
        metrics["score_std"] = float(np.std(scores))
        if calibration is not None:
            metrics["raw"] = binary_metrics(labels, raw, 0.5)
        entry: dict[str, Any] = {"metrics": metrics}
        if out_dir is not None:
            entry["files"] = write_binary_report(
                out_dir, ids, labels, scores, metrics, name=name, title=f"{positive} vs {negative}, {name}",
                positive=positive, negative=negative, threshold=threshold,
            )
        results[name] = entry
    return results


def evaluate_network(
    bundle: Bundle, head_dirs: dict[str, Path], data: DataConfig, perturbations: list[str], out: Path,
) -> dict[str, Any]:
    """Bundle + every head on the dataset's test split, per perturbation; writes reports into out/."""
    heads = [load_head(head_dirs[s], bundle) for s in sorted(head_dirs)]
    attributor = OfflineAttributor(bundle, heads)
    index, splits = load_split(data)
    test = splits["test"]
    ids = sample_ids(test, index.root)
    settings = {name: parse_perturbation(name) for name in perturbations}
    results: dict[str, Any] = {}
    for name, setting in settings.items():
        evaluation = evaluate_attribution(attributor, index, test, perturbation=setting)
        metrics = evaluation.metrics
        sources = evaluation.classes[1:]
        files = {
            "multiclass": write_multiclass_report(
                out, ids, evaluation.classes, evaluation.true, evaluation.closed_predicted, metrics["multiclass"],
                name=f"{name}_multiclass", title=f"bundle + heads, {name}",
                scores=np.column_stack([evaluation.fake_scores, evaluation.calibrated]),
                score_names=["fake_score", *sources], extra_predicted=[AMBIGUOUS],
                columns={f"raw_{source}": evaluation.raw[:, j] for j, source in enumerate(sources)},  # what the rule ranks
            ),
            "open_set": write_multiclass_report(
                out, ids, evaluation.classes, evaluation.true, evaluation.predicted, metrics["open_set"],
                name=f"{name}_open_set", title=f"bundle + heads (open set), {name}", extra_predicted=[UNKNOWN, AMBIGUOUS],
                columns=evaluation.answer_columns(),
            ),
            "detection": write_binary_report(
                out, ids, evaluation.true > 0, evaluation.fake_scores, metrics["detection"],
                name=f"{name}_detection", title=f"primary module, {name}",
            ),
        }
        write_json(out / f"{name}_metrics.json", metrics)
        results[name] = {"metrics": metrics, "files": files}
    return results

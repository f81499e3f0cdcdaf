"""Classification metrics in plain numpy, so every report computes them the same way.

Binary: accuracy, precision, recall, F1 at a threshold, ROC-AUC by the rank statistic
(Mann-Whitney U, ties averaged), log-loss. Multiclass: confusion matrix, accuracy, per-class and
macro precision/recall/F1, and one-vs-rest ROC-AUC per class when scores are given.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

_EPS = 1e-7


def _ratio(numerator: float, denominator: float) -> float:
    """0 when the denominator is 0 (e.g. precision of a class never predicted)."""
    return float(numerator / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def roc_auc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative); NaN without both classes."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: Sequence[float], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds), one point per distinct score."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_value]
    fps = (last_of_value + 1) - tps
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, scores[last_of_value]]
    return fpr, tpr, thresholds


def log_loss(labels: Sequence[float], probabilities: Sequence[float]) -> float:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), _EPS, 1 - _EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def binary_metrics(labels: Sequence[float], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """Threshold metrics for the positive class plus ROC-AUC and log-loss of the scores."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    predicted = scores >= threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    tn = int((~predicted & ~labels).sum())
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "n": int(labels.size),
        "positives": int(labels.sum()),
        "accuracy": _ratio(tp + tn, labels.size),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "specificity": _ratio(tn, tn + fp),
        "roc_auc": roc_auc(labels, scores),
        "log_loss": log_loss(labels, scores),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def describe_binary(metrics: Mapping[str, float], positives: str = "positives") -> str:
    """One readable line of `binary_metrics` for CLI output."""
    return (
        f"accuracy {metrics['accuracy']:.4f}  precision {metrics['precision']:.4f}  recall {metrics['recall']:.4f}  "
        f"F1 {metrics['f1']:.4f}  ROC-AUC {metrics['roc_auc']:.4f}  (n={metrics['n']}, {positives}={metrics['positives']})"
    )


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """matrix[true, predicted] counts."""
    y_true = np.asarray(y_true, dtype=int).ravel()
    y_pred = np.asarray(y_pred, dtype=int).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def multiclass_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    class_names: Sequence[str],
    scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, confusion matrix, and OvR ROC-AUC.

    `y_pred` may contain indices >= len(class_names) (e.g. an extra `unknown` column): they
    count as wrong for every class; the confusion matrix then has those extra columns.
    """
    y_true = np.asarray(y_true, dtype=int).ravel()
    y_pred = np.asarray(y_pred, dtype=int).ravel()
    k = len(class_names)
    size = max(k, int(y_pred.max(initial=0)) + 1, int(y_true.max(initial=0)) + 1)
    matrix = confusion_matrix(y_true, y_pred, size)
    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(class_names):
        tp = int(matrix[c, c])
        fp = int(matrix[:, c].sum() - tp)
        fn = int(matrix[c, :].sum() - tp)
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        entry = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(matrix[c, :].sum()),
        }
        if scores is not None:
            entry["roc_auc"] = roc_auc(y_true == c, np.asarray(scores)[:, c])
        per_class[name] = entry
    present = [name for name in class_names if per_class[name]["support"] > 0]
    macro = {
        key: float(np.mean([per_class[name][key] for name in present])) if present else 0.0
        for key in ("precision", "recall", "f1")
    }
    if scores is not None:
        aucs = [per_class[name]["roc_auc"] for name in present if not np.isnan(per_class[name]["roc_auc"])]
        macro["roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return {
        "n": int(y_true.size),
        "accuracy": _ratio(int(np.trace(matrix[:k, :k])), y_true.size),
        "macro": macro,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "classes": list(class_names),
    }

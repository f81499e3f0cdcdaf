"""Files people look at after a test run: predictions CSV, metrics JSON, confusion-matrix and ROC PNGs.

matplotlib runs on the Agg backend (no display needed); figures are closed after saving.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from shared_backbone.training.classification_metrics import roc_auc, roc_curve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _json_safe(value: Any) -> Any:
    """NaN/inf become null, numpy scalars/arrays become Python values (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    return path


def write_predictions(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One row per image (id, ground truth, prediction, scores...); columns from the first row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError(f"{path}: no predictions to write")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _save(plt, fig, path: str | Path) -> Path:
    """Writes a finished figure as PNG (creating its folder) and frees it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion_matrix(
    path: str | Path, matrix: np.ndarray, row_names: Sequence[str], column_names: Sequence[str] | None = None, *, title: str = ""
) -> Path:
    """Counts with row-normalised colour (recall per true class)."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    column_names = list(column_names or row_names)
    matrix = matrix[: len(row_names), : len(column_names)]
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = 1.2 + 0.6 * max(len(row_names), len(column_names))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(len(column_names)), column_names, rotation=45, ha="right")
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(int(count)), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_roc_curves(path: str | Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str = "") -> Path:
    """One ROC curve per entry name -> (0/1 labels, scores), AUC in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, (labels, scores) in curves.items():
        labels = np.asarray(labels).astype(bool)
        if labels.all() or not labels.any():
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {roc_auc(labels, scores):.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    return _save(plt, fig, path)


def write_binary_report(
    out_dir: str | Path, ids: Sequence[str], labels: np.ndarray, scores: np.ndarray, metrics: dict[str, Any], *,
    name: str, title: str, positive: str = "fake", negative: str = "real", threshold: float = 0.5,
) -> dict[str, str]:
    """predictions.csv, metrics.json, confusion matrix and ROC PNG of one binary classifier."""
    out_dir = Path(out_dir)
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    names = [negative, positive]
    rows = [
        {"image": i, "truth": names[t], "predicted": names[p], "score": float(s)}
        for i, t, p, s in zip(ids, labels, predicted, scores)
    ]
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    return {
        "predictions": str(write_predictions(out_dir / f"{name}_predictions.csv", rows)),
        "metrics": str(write_json(out_dir / f"{name}_metrics.json", metrics)),
        "confusion_matrix": str(plot_confusion_matrix(out_dir / f"{name}_confusion.png", matrix, names, title=title)),
        "roc": str(plot_roc_curves(out_dir / f"{name}_roc.png", {name: (labels, scores)}, title=title)),
    }


def write_multiclass_report(
    out_dir: str | Path, ids: Sequence[str], classes: Sequence[str], true: np.ndarray, predicted: np.ndarray,
    metrics: dict[str, Any], *, name: str, title: str, scores: np.ndarray | None = None,
    score_names: Sequence[str] | None = None, extra_predicted: Sequence[str] = (),
    columns: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, str]:
    """predictions.csv (with per-class scores), metrics.json, confusion matrix and one-vs-rest ROC PNG.

    `extra_predicted` names prediction indices beyond the classes (e.g. `unknown`); `columns` adds
    per-image columns to the CSV (e.g. the prediction set and p-values).
    """
    out_dir = Path(out_dir)
    predicted_names = [*classes, *extra_predicted]
    score_names = list(score_names or classes)
    rows = []
    for k, (image, t, p) in enumerate(zip(ids, true, predicted)):
        row: dict[str, Any] = {"image": image, "truth": classes[int(t)], "predicted": predicted_names[int(p)]}
        if scores is not None:
            row.update({f"score_{n}": float(scores[k, j]) for j, n in enumerate(score_names)})
        row.update({column: values[k] for column, values in (columns or {}).items()})
        rows.append(row)
    matrix = np.array(metrics.get("confusion_matrix") or np.zeros((len(predicted_names),) * 2, int))
    files = {
        "predictions": str(write_predictions(out_dir / f"{name}_predictions.csv", rows)),
        "metrics": str(write_json(out_dir / f"{name}_metrics.json", metrics)),
        "confusion_matrix": str(
            plot_confusion_matrix(out_dir / f"{name}_confusion.png", matrix, list(classes), predicted_names[: matrix.shape[1]], title=title)
        ),
    }
    if scores is not None:
        true_names = [classes[int(t)] for t in true]
        curves = {n: (np.array([t == n for t in true_names]), scores[:, j]) for j, n in enumerate(score_names)}
        files["roc"] = str(plot_roc_curves(out_dir / f"{name}_roc.png", curves, title=title))
    return files

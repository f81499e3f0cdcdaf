"""Means and spreads over seeds, `accuracy.json`, and the Markdown table for BENCHMARKS.md."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attribnet.bench.accuracy.config import METHODS

ROW_LABELS = {
    "detection": "detection (primary module, real vs fake)",
    "heads_raw": "strict heads, raw scores (paper's rule)",
    "heads_calibrated": "**strict heads, calibrated** (paper's rule)",
    "heads_shared": "heads that saw every source (paper's opt-in setting)",
    "gdaconv": "gdaconv, centralized multiclass",
    "postpool": "postpool, centralized multiclass",
    "dct_linear": "DCT regression, centralized multiclass",
}
TIME_KEYS = {
    "detection": ("detector",), "heads_raw": ("detector", "heads_strict"), "heads_calibrated": ("detector", "heads_strict"),
    "heads_shared": ("detector", "heads_shared"), "gdaconv": ("gdaconv",), "postpool": ("postpool",), "dct_linear": ("dctlinear",),
}


def mean_and_std(values: list[Any]) -> Any:
    """The same structure as one seed's values, with {mean, std, n} at every numeric leaf."""
    first = values[0]
    if isinstance(first, dict):
        return {k: mean_and_std([v[k] for v in values if k in v]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        array = np.array([float(v) for v in values])
        finite = array[np.isfinite(array)]
        return {"mean": float(finite.mean()) if finite.size else float("nan"),
                "std": float(finite.std()) if finite.size else float("nan"), "n": int(finite.size)}
    return first


def means(tree: Any) -> Any:
    """Only the means of a `mean_and_std` tree (the machine-read summary)."""
    if isinstance(tree, dict) and set(tree) == {"mean", "std", "n"}:
        return tree["mean"]
    if isinstance(tree, dict):
        return {k: means(v) for k, v in tree.items()}
    return tree


def summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    stats = mean_and_std(per_seed)
    clean_trained, robust_trained = means(stats["clean_trained"]), means(stats["robust_trained"])
    return {
        "clean": clean_trained["clean"],
        "perturbed": {k: v for k, v in clean_trained.items() if k != "clean"},
        "robust_trained": {"clean": robust_trained["clean"], "perturbed": {k: v for k, v in robust_trained.items() if k != "clean"}},
        "open_set": means(stats["open_set"]),
        "late_join": means(stats["late_join"]),
        "train_seconds": means(stats["train_seconds"]),
        "spread": {"clean_trained": stats["clean_trained"], "robust_trained": stats["robust_trained"],
                   "open_set": stats["open_set"], "late_join": stats["late_join"]},
    }


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat or not math.isfinite(stat["mean"]):
        return "–"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"


def _table(spread: dict[str, Any], seconds: dict[str, Any]) -> list[str]:
    names = list(spread)
    lines = ["| method | " + " | ".join(names) + " | train s/seed |", "|---|" + "---|" * (len(names) + 1)]
    for method in METHODS:
        if method not in spread[names[0]]:
            continue
        wall = sum(seconds.get(k, 0.0) for k in TIME_KEYS[method])
        lines.append(f"| {ROW_LABELS[method]} | " + " | ".join(_cell(spread[n].get(method)) for n in names) + f" | {wall:.0f} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The benchmark's section of BENCHMARKS.md."""
    s, spread, ds = report["summary"], report["summary"]["spread"], report["dataset"]
    seconds = s["train_seconds"]
    robust_seconds = {**seconds, "detector": seconds.get("detector", 0) + seconds.get("detector_robust", 0),
                      "heads_strict": seconds.get("heads_strict_robust", 0), "heads_shared": seconds.get("heads_shared_robust", 0),
                      **{k: seconds.get(f"{k}_robust", 0) for k in ("gdaconv", "postpool", "dctlinear")}}
    o, late = spread["open_set"], spread["late_join"]
    lines = [
        f"### {ds['name']}: {report['profile']} profile, seeds {report['seeds']}",
        "",
        f"`{report['command']}`, {report['created']}, {report['wall_seconds'] / 60:.0f} min wall on {report['machine']}. "
        f"{ds['image_size']} px, {ds['input']} input; images per source: {ds['per_source']}; test images: {ds['test_counts']}. "
        f"Nodes (strict: own images + reference set + {report['settings']['negatives']} self-made negatives): "
        f"{', '.join(ds['roles']['nodes'])}. Reference set: {ds['reference']}. Held out of all training: "
        f"{', '.join(ds['roles']['held_out'])}. Accuracy is the paper's closed-set rule over real + every node "
        "(mean ± std over seeds); `train s/seed` is the wall time of the models the row needs.",
        "",
        "Clean-trained models:",
        "",
        *_table(spread["clean_trained"], seconds),
        "",
        f"Robust-trained models (detector retrained, heads retrained, baselines trained on `{report['settings']['robust']}`):",
        "",
        *_table(spread["robust_trained"], robust_seconds),
        "",
        f"Open set (clean models, strict heads, alpha {s['open_set']['alpha']}): AUROC known vs held-out {_cell(o['auroc'])}, "
        f"held-out answered `unknown` {_cell(o['unknown_rate'])} (called real {_cell(o['answered_real_rate'])}), "
        f"known accuracy {_cell(o['known_accuracy_closed'])} closed-set vs {_cell(o['known_accuracy_open'])} with the full rule "
        f"(drop {_cell(o['known_accuracy_drop'])}), conformal coverage {_cell(o['coverage'])} (target {1 - s['open_set']['alpha']:.2f}).",
        "",
        f"Late joiners ({', '.join(ds['roles']['late'])}, in no detector training): accuracy {_cell(late['joined_accuracy'])} "
        f"vs founding nodes {_cell(late['founding_accuracy'])}.",
        "",
    ]
    return "\n".join(lines)

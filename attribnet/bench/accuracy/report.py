"""Means and spreads over seeds, `accuracy.json`, and the Markdown table for BENCHMARKS.md."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attribnet.bench.accuracy.config import METHODS

ROW_LABELS = {
    "detection": "detection (primary module, real vs fake)",
    "heads_raw": "**strict heads, ranked by raw scores** (the network's rule: paper's argmax, `rank_by: raw`)",
    "heads_calibrated": "strict heads, ranked by calibrated scores (`rank_by: calibrated`)",
    "heads_shared": "heads that saw every source (paper's opt-in setting)",
    "gdaconv": "gdaconv, centralized multiclass",
    "postpool": "postpool, centralized multiclass",
    "dct_linear": "DCT regression, centralized multiclass",
    "spectral_template": "spectral templates, per node (own images + reals, no backbone; the detector decides real)",
    "heads_templates_borda": "strict heads + spectral templates (Borda count of the two rankings; not the network's rule)",
}
TIME_KEYS = {
    "detection": ("detector",), "heads_raw": ("detector", "heads_strict"), "heads_calibrated": ("detector", "heads_strict"),
    "heads_shared": ("detector", "heads_shared"), "gdaconv": ("gdaconv",), "postpool": ("postpool",), "dct_linear": ("dctlinear",),
    "spectral_template": ("detector", "spectral_template"),
    "heads_templates_borda": ("detector", "heads_strict", "spectral_template"),
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


# Summary keys also copied to the top of accuracy.json (when the run measured them).
TOP_KEYS = ("clean", "perturbed", "robust_trained", "open_set", "late_join", "private", "private_finetuned",
            "leave_one_family_out", "out_of_scope", "out_of_scope_known", "oracle")
OPTIONAL = ("late_join", "private", "private_finetuned", "leave_one_family_out", "out_of_scope", "out_of_scope_known", "oracle")
ORACLE_METHODS = ("detection", "heads_raw", "heads_calibrated", "gdaconv", "postpool", "dct_linear")


def summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of every protocol the run measured, and {mean, std, n} spreads for the tables."""
    stats = mean_and_std(per_seed)
    clean_trained = means(stats["clean_trained"])
    result = {
        "clean": clean_trained["clean"],
        "perturbed": {k: v for k, v in clean_trained.items() if k != "clean"},
        "open_set": means(stats["open_set"]),
        "train_seconds": means(stats["train_seconds"]),
        "spread": {"clean_trained": stats["clean_trained"], "open_set": stats["open_set"]},
    }
    if "robust_trained" in stats:
        robust_trained = means(stats["robust_trained"])
        result["robust_trained"] = {"clean": robust_trained["clean"],
                                    "perturbed": {k: v for k, v in robust_trained.items() if k != "clean"}}
        result["spread"]["robust_trained"] = stats["robust_trained"]
    for key in OPTIONAL:
        if key in stats:
            result[key] = means(stats[key])
            result["spread"][key] = stats[key]
    return result


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
    founding = report["per_seed"][0]
    lines = [
        f"### {ds['name']}, {ds['image_size']} px, {ds['input']} input: {report['profile']} profile, seeds {report['seeds']}",
        "",
        f"`{report['command']}`, {report['created']}, {report['wall_seconds'] / 60:.0f} min wall on {report['machine']}. "
        f"{ds['image_size']} px, {ds['input']} input; images per source: {ds['per_source']}; test images: {ds['test_counts']}. "
        f"Nodes (strict: own images + reference set + {report['settings']['negatives']} self-made negatives): "
        f"{', '.join(ds['roles']['nodes'])}. Reference set: {ds['reference']}. Held out of all training: "
        f"{', '.join(ds['roles']['held_out'])}. Accuracy is the paper's closed-set rule over real + every node "
        "(mean ± std over seeds); `train s/seed` is the wall time of the models the row needs.",
        "",
        f"Founding setting (what `make demo` and the offline workflow do): the detector and its source-aware trunk "
        f"trained on {', '.join(founding['detector_sources'])}, i.e. on every node's source.",
        "",
        "Clean-trained models:",
        "",
        *_table(spread["clean_trained"], seconds),
        "",
        *_robust_section(report),
        *_oracle_section(report),
        *_open_set_section(report),
        *generalisation_sections(report),
    ]
    return "\n".join(lines)


def _robust_section(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    if "robust_trained" not in s["spread"]:
        return []
    seconds = s["train_seconds"]
    robust_seconds = {**seconds, "detector": seconds.get("detector", 0) + seconds.get("detector_robust", 0),
                      "heads_strict": seconds.get("heads_strict_robust", 0), "heads_shared": seconds.get("heads_shared_robust", 0),
                      **{k: seconds.get(f"{k}_robust", 0) for k in ("gdaconv", "postpool", "dctlinear")}}
    return [f"Robust-trained models (detector retrained, heads retrained, baselines trained on `{report['settings']['robust']}`):",
            "", *_table(s["spread"]["robust_trained"], robust_seconds), ""]


def _ratio(numerator: dict[str, Any] | None, denominator: dict[str, Any] | None) -> str:
    if not numerator or not denominator or not denominator["mean"] > 0:
        return "–"
    return f"{numerator['mean'] / denominator['mean']:.2f}"


def _oracle_section(report: dict[str, Any]) -> list[str]:
    """Per perturbation: clean-trained, robust-trained and the oracle (trained and tested on perturbed data)."""
    spread = report["summary"]["spread"]
    if "oracle" not in spread:
        return []
    lines = ["Robustness against an oracle: per test perturbation, the clean-trained and robust-trained models on "
             "perturbed test images beside the oracle, the same setting trained and tested on a perturbed copy of the "
             "data (the ceiling: what survives the perturbation at all). `robust / oracle` is the target's ratio.", "",
             "| perturbation | method | clean-trained | robust-trained | oracle | robust / oracle |", "|---|---|---|---|---|---|"]
    for kind, oracle in spread["oracle"].items():
        clean = spread["clean_trained"].get(kind, {})
        robust = spread.get("robust_trained", {}).get(kind, {})
        for method in (m for m in ORACLE_METHODS if m in oracle):
            lines.append(f"| {kind} {report['settings']['test_perturbations'][kind]:g} | {ROW_LABELS[method]} | "
                         f"{_cell(clean.get(method))} | {_cell(robust.get(method))} | {_cell(oracle[method])} | "
                         f"{_ratio(robust.get(method), oracle[method])} |")
    return [*lines, ""]


LOST_LABELS = {"no_candidate": "no source reaches its threshold", "tie": "ambiguous", "atypical_tie": "atypical tie",
               "atypical": "atypical for its source", "best_source": "another source named"}


def _lost(o: dict[str, Any]) -> str:
    """Where the full rule loses known images the closed set answers right, by the rule's exit."""
    lost = o.get("known_accuracy_lost", {})
    parts = [f"{LOST_LABELS[r]} {_cell(lost[r])}" for r in LOST_LABELS if r in lost and lost[r]["mean"] > 0]
    return f": {', '.join(parts)}" if parts else ""


def _open_set_section(report: dict[str, Any]) -> list[str]:
    s, spread, ds = report["summary"], report["summary"]["spread"], report["dataset"]
    o = spread["open_set"]
    lines = [
        f"Open set (clean models, strict heads, alpha {s['open_set']['alpha']:g}): AUROC known vs held-out {_cell(o['auroc'])}, "
        f"held-out answered `unknown` {_cell(o['unknown_rate'])} (called real {_cell(o['answered_real_rate'])}), "
        f"known accuracy {_cell(o['known_accuracy_closed'])} closed-set vs {_cell(o['known_accuracy_open'])} with the full rule "
        f"(drop {_cell(o['known_accuracy_drop'])}{_lost(o)}), known images answered with a source that did not make "
        f"them {_cell(o.get('wrong_source_closed'))} closed-set vs {_cell(o.get('wrong_source_open'))} with the full rule, "
        f"AUROC of the rule's own evidence (the best source's smaller p-value) {_cell(o.get('auroc_rule'))}, "
        f"prediction-set coverage {_cell(o['coverage'])} (empty where the detector calls a fake real), "
        f"conformal coverage {_cell(o.get('conformal_coverage'))} (target {1 - s['open_set']['alpha']:.2f}).",
        "",
    ]
    if "coverage_by_group" in o and "mean" in o["coverage_by_group"]:
        g = o["coverage_by_group"]
        lines[-1:-1] = [f"Conformal coverage per (source, photo), over {g['groups']['mean']:.0f} of them: mean "
                        f"{_cell(g['mean'])}, lowest quartile {_cell(g['quartile_low'])}, lowest {_cell(g['min'])}."]
    if "late_join" in spread:
        late = spread["late_join"]
        lines += [f"Late joiners ({', '.join(ds['roles']['late'])}, in no detector training): accuracy {_cell(late['joined_accuracy'])} "
                  f"vs founding nodes {_cell(late['founding_accuracy'])}.", ""]
    return lines


def _private_section(report: dict[str, Any]) -> list[str]:
    spread = report["summary"]["spread"]
    if "private" not in spread:
        return []
    clean = spread["clean_trained"]["clean"]
    columns = [("founding", {**clean, "open_set": spread["open_set"]}), ("fully private", spread["private"])]
    if "private_finetuned" in spread:
        columns.append(("fully private + federated fine-tuning", spread["private_finetuned"]))
    trained = report["per_seed"][0]["private"]["detector_sources"]
    rows = [("detection (primary module, real vs fake)", lambda m: m["detection"]),
            ("**strict heads, ranked by raw scores** (the network's rule)", lambda m: m["heads_raw"]),
            ("strict heads, ranked by calibrated scores", lambda m: m["heads_calibrated"]),
            ("strict heads + spectral templates, Borda count", lambda m: m.get("heads_templates_borda")),
            ("conformal coverage (full rule)", lambda m: m["open_set"]["coverage"]),
            ("known accuracy (full rule)", lambda m: m["open_set"]["known_accuracy_open"]),
            ("known accuracy drop, full rule vs closed set", lambda m: m["open_set"]["known_accuracy_drop"]),
            ("known images named as another source (full rule)", lambda m: m["open_set"].get("wrong_source_open")),
            ("held-out generators answered `unknown` (full rule)", lambda m: m["open_set"]["unknown_rate"]),
            ("AUROC known vs held-out, the rule's own evidence", lambda m: m["open_set"].get("auroc_rule"))]
    return [
        f"Fully private setting: the coordinator trains its detector and source-aware trunk on {', '.join(trained)} only "
        "(never a node's images) and every node joins late; with fine-tuning, every node then trains the backbone on "
        "its own images and the coordinator keeps the robust average of their weights (never an image). The founding "
        f"setting's models beside them (gdaconv, centralized on every source: {_cell(clean.get('gdaconv'))}"
        + (f"; spectral templates, each node's own images and reals, no backbone: {_cell(clean['spectral_template'])}"
           if "spectral_template" in clean else "") + ").",
        "",
        "| clean test images | " + " | ".join(name for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
        *[f"| {label} | " + " | ".join(_cell(pick(m)) for _, m in columns) + " |" for label, pick in rows],
        "",
    ]


def _lofo_section(report: dict[str, Any]) -> list[str]:
    spread = report["summary"]["spread"]
    if "leave_one_family_out" not in spread:
        return []
    lines = [
        "Leave one family out: the family's sources leave the detector's and the trunk's training and the reference set, "
        "and every node's self-made negatives exclude the family; its sources stay nodes. Accuracy on the family's own "
        "test images (closed-set rule over real + every node); the founding strict heads and the centralized baselines "
        "saw every source.",
        "",
        "| family left out | sources | strict heads, calibrated | **strict heads, raw** (the network's rule) | strict heads, founding "
        "| gdaconv (sees all) "
        "| DCT regression (sees all) | spectral templates (no backbone) | detected as fake | all nodes, calibrated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, row in spread["leave_one_family_out"].items():
        sources = ", ".join(report["per_seed"][0]["leave_one_family_out"][family]["sources"])
        cells = [row.get(k) for k in ("heads_calibrated", "heads_raw", "heads_calibrated_founding", "gdaconv", "dct_linear",
                                        "spectral_template", "detected", "all_nodes_heads_calibrated")]
        lines.append(f"| {family} | {sources} | " + " | ".join(_cell(c) for c in cells) + " |")
    return [*lines, ""]


def _out_of_scope_section(report: dict[str, Any]) -> list[str]:
    spread = report["summary"]["spread"]
    if "out_of_scope" not in spread:
        return []
    private = spread.get("private", {}).get("out_of_scope", {})
    known = spread["out_of_scope_known"]
    lines = [
        "Out of scope (images that are none of the sources, through the full open-set rule of `attribnet predict` and "
        "the gateway; pinned = answered with a named source). Known test images under the same rule: accuracy "
        f"{_cell(known['known_accuracy'])}, prediction-set coverage {_cell(known['coverage'])} (empty where the "
        f"detector calls a fake real; the conformal guarantee's own coverage is in the open-set line).",
        "",
        "| kind | images | pinned, founding | `unknown` | called real | refused | pinned, fully private |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in spread["out_of_scope"].items():
        lines.append(f"| {kind} | {row['images']['mean']:.0f} | {_cell(row['pinned_rate'])} | {_cell(row['unknown_rate'])} | "
                     f"{_cell(row['answered_real_rate'])} | {_cell(row['refused_rate'])} | {_cell(private.get(kind, {}).get('pinned_rate'))} |")
    return [*lines, ""]


def generalisation_sections(report: dict[str, Any]) -> list[str]:
    """The fully private setting, leave-one-family-out and the out-of-scope corpus, when the run measured them."""
    return [*_private_section(report), *_lofo_section(report), *_out_of_scope_section(report)]

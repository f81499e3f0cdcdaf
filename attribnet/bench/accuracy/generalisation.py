"""The generalisation settings' numbers: the fully private network and leave-one-family-out.

A setting's models are scored on the same clean test images as the founding setting's; a family
left out is judged on its own sources' images, against the founding setting's strict heads and
the centralized baselines (which saw every source) on the same images.
"""

from __future__ import annotations

from typing import Any

from attribnet.bench.accuracy import evaluate as ev
from attribnet.bench.accuracy.bench_data import BenchData, Setting, family_of
from attribnet.bench.accuracy.train import STRICT, SeedModels
from shared_backbone.model.rule import REAL, RuleSettings

# The founding setting's per-source numbers a family left out is compared with, by report key.
COMPARED = {"heads_calibrated_founding": "heads_calibrated", "gdaconv": "gdaconv", "dct_linear": "dct_linear", "postpool": "postpool",
            "spectral_template": "spectral_template"}


def setting_metrics(models: SeedModels, setting: Setting, bench: BenchData, everything: ev.TestImages,
                    settings: RuleSettings) -> dict[str, Any]:
    """Detection, strict heads (closed-set rule, per node) and the open set of one setting's models."""
    outputs = ev.run_backbone(models.bundles[setting.name], everything.images(ev.CLEAN))
    truth = ev.truths(bench.index, everything.samples)
    known = [s.source not in bench.roles.held_out for s in everything.samples]
    results = ev.answers(outputs, models.heads[STRICT], settings)
    raw = ev.closed_set_answers(results, settings.fake_threshold, rank_by="raw")
    calibrated = ev.closed_set_answers(results, settings.fake_threshold)
    nodes = bench.roles.nodes
    detected = {s: float((outputs.fake[[t == s for t in truth]] >= settings.fake_threshold).mean()) for s in nodes}
    with_templates = ev.template_rows(models.templates, everything.images(ev.CLEAN), outputs, results, settings.fake_threshold,
                                      bench.index) if models.templates else {}
    return {
        **{key: ev.accuracy(answers, truth, known) for key, answers in with_templates.items()},
        **setting.describe(bench.reals, bench.config.pretext),
        "detection": ev.accuracy([f >= settings.fake_threshold for f in outputs.fake], [t != REAL for t in truth], known),
        "heads_raw": ev.accuracy(raw, truth, known),
        "heads_calibrated": ev.accuracy(calibrated, truth, known),
        "per_source": {"heads_raw": ev.per_source_recall(raw, truth, nodes),
                       "heads_calibrated": ev.per_source_recall(calibrated, truth, nodes),
                       **{key: ev.per_source_recall(answers, truth, nodes) for key, answers in with_templates.items()}},
        "per_source_detected": detected,
        "open_set": ev.open_set_metrics(results, truth, nodes, settings),
        "train_seconds": models.seconds,
    }


def weighted(per_source: dict[str, float], counts: dict[str, int], sources: list[str]) -> float:
    """Accuracy over the test images of `sources`, from per-source accuracies and image counts."""
    total = sum(counts.get(s, 0) for s in sources)
    return sum(per_source[s] * counts.get(s, 0) for s in sources) / total if total else float("nan")


def family_result(setting: dict[str, Any], founding: dict[str, Any], family: str, nodes: list[str],
                  counts: dict[str, int]) -> dict[str, Any]:
    """One family left out: its nodes' test images under the setting's models vs the founding ones."""
    sources = [s for s in nodes if family_of(s) == family]
    result = {
        "sources": sources,
        "heads_calibrated": weighted(setting["per_source"]["heads_calibrated"], counts, sources),
        "heads_raw": weighted(setting["per_source"]["heads_raw"], counts, sources),
        "detected": weighted(setting["per_source_detected"], counts, sources),
        "all_nodes_heads_calibrated": setting["heads_calibrated"],
        **{k: setting[k] for k in ("detector_sources", "trunk_sources", "reference_sources", "negatives_exclude_families")},
    }
    for key, method in COMPARED.items():
        if method in founding["per_source"]:
            result[key] = weighted(founding["per_source"][method], counts, sources)
    return result


def leave_one_family_out(settings: dict[str, dict[str, Any]], founding: dict[str, Any], bench: BenchData) -> dict[str, Any]:
    """{family: family_result} for every leave-one-family-out setting of one seed."""
    counts: dict[str, int] = {}
    for sample in bench.test:
        counts[sample.source] = counts.get(sample.source, 0) + 1
    return {name.split("-", 1)[1]: family_result(metrics, founding, name.split("-", 1)[1], bench.roles.nodes, counts)
            for name, metrics in settings.items() if name.startswith("lofo-")}

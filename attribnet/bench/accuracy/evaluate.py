"""Scoring bundles and heads on the test images, clean and perturbed, and the metrics of each protocol.

Every test image is read once per perturbation (the same perturbation every evaluator applies,
`perturbations.image_rng`); a bundle's trunk runs once per image, and every head set of that
bundle is scored on the same float16 features, exactly as the gateway would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attribnet.lab.baselines.spectral_template import SpectralTemplate, borda, correlations
from shared_backbone.data.datasets import DatasetIndex, Sample
from shared_backbone.data.perturbations import image_rng, perturb_fixed
from shared_backbone.training.classification_metrics import roc_auc
from shared_backbone.model import networks
from shared_backbone.model.bundle import Bundle
from shared_backbone.model.features import as_head_features
from shared_backbone.model.heads import Head
from shared_backbone.model.preprocessing import load_image, to_model_input
from shared_backbone.model.attributor import attribute_with_heads
from shared_backbone.model.rule import REAL, REASONS, ImageAttribution, RuleSettings, closed_set

BATCH = 256
CLEAN = "clean"


class TestImages:
    """uint8 test images per perturbation name, made once and shared by every model."""

    def __init__(self, samples: list[Sample], size: int, perturbations: dict[str, float]) -> None:
        self.samples = samples
        self.size = size
        self.perturbations = perturbations
        self._cache: dict[str, list[np.ndarray]] = {}

    @property
    def names(self) -> list[str]:
        return [CLEAN, *self.perturbations]

    def images(self, name: str) -> list[np.ndarray]:
        if name not in self._cache:
            clean = self._cache.get(CLEAN) or [load_image(s.path, self.size) for s in self.samples]
            self._cache[CLEAN] = clean
            if name != CLEAN:
                value = self.perturbations[name]
                self._cache[name] = [perturb_fixed(rgb, name, value, image_rng(s.path)) for rgb, s in zip(clean, self.samples)]
        return self._cache[name]


@dataclass
class BackboneOutputs:
    """The primary module's fake scores and the heads' float16 input for every test image."""

    fake: np.ndarray
    features: np.ndarray


def run_backbone(bundle: Bundle, images: list[np.ndarray]) -> BackboneOutputs:
    serving = networks.build_serving_model(bundle.load_primary())
    fakes, features = [], []
    for start in range(0, len(images), BATCH):
        batch = np.stack([to_model_input(rgb, bundle.input_spec) for rgb in images[start : start + BATCH]])
        fake, trunk = serving(batch, training=False)
        fakes.append(np.asarray(fake).reshape(-1))
        features.append(as_head_features(np.asarray(trunk)))
    return BackboneOutputs(np.concatenate(fakes).astype(np.float64), np.concatenate(features))


def answers(outputs: BackboneOutputs, heads: list[Head], settings: RuleSettings) -> list[ImageAttribution]:
    """Every image's answer by the network's whole rule, typicality gate included (raw and calibrated scores and
    p-values kept): `attribnet predict`'s own function."""
    return attribute_with_heads(heads, outputs.fake, outputs.features, settings)


def truths(index: DatasetIndex, samples: list[Sample]) -> list[str]:
    return [index.class_of(s.source) for s in samples]


def accuracy(predicted: list[str], truth: list[str], mask: list[bool] | None = None) -> float:
    pairs = [(p, t) for i, (p, t) in enumerate(zip(predicted, truth)) if mask is None or mask[i]]
    return float(np.mean([p == t for p, t in pairs])) if pairs else float("nan")


def closed_set_answers(results: list[ImageAttribution], fake_threshold: float, *, rank_by: str = "calibrated") -> list[str]:
    """The paper's rule: the detector, then the argmax of the head scores `rank_by` names (`ImageAttribution.ranking`)."""
    return [closed_set(r.fake_score, r.ranking(rank_by), fake_threshold).attribution for r in results]


def template_rows(templates: list[SpectralTemplate], images: list[np.ndarray], outputs: BackboneOutputs,
                  heads: list[ImageAttribution], fake_threshold: float, index: DatasetIndex) -> dict[str, list[str]]:
    """The spectral_template protocol's closed-set answers, the detector first: the best-correlated node
    (templates alone), and the best node by the Borda count of the heads' and the templates' rankings."""
    sources = [t.source for t in templates]
    alone = correlations(templates, images)
    beside = borda(np.array([[r.raw.get(s, -np.inf) for s in sources] for r in heads]), alone)

    def answers(scores: np.ndarray) -> list[str]:
        best = scores.argmax(axis=1)
        return [REAL if fake < fake_threshold else index.class_of(sources[i]) for fake, i in zip(outputs.fake, best)]

    return {"spectral_template": answers(alone), "heads_templates_borda": answers(beside)}


def detection_accuracy(outputs: BackboneOutputs, truth: list[str], fake_threshold: float) -> float:
    called_fake = outputs.fake >= fake_threshold
    return float(np.mean([fake == (t != REAL) for fake, t in zip(called_fake, truth)]))


def conformally_kept(result: ImageAttribution, source: str, alpha: float) -> bool:
    """The conformal guarantee's event: the true source's head answered and its p-value does not exclude it
    (a head without a usable reference cannot exclude), whatever the detector then says."""
    return source in result.raw and result.p_values.get(source, 1.0) > alpha


def open_set_metrics(results: list[ImageAttribution], truth: list[str], known: list[str], settings: RuleSettings,
                     groups: list[str] | None = None) -> dict[str, Any]:
    """Known sources vs generators no training set held, with the full rule (conformal sets).

    The closed-set answers compared with are the argmax of the scores the rule ranks by, so the drop
    is what the rule's open-set steps cost, not a change of order. `coverage` is the rule's: the true
    source in the prediction set, which is empty for a fake the detector calls real;
    `conformal_coverage` is the guarantee's (`conformally_kept`), which the reference alone decides.
    With `groups` (each image's photo), that per photo as well."""
    is_known = [t in known or t == REAL for t in truth]
    is_new = [t not in known and t != REAL for t in truth]
    fakes = [t in known for t in truth]
    full = [r.attribution for r in results]
    closed = closed_set_answers(results, settings.fake_threshold, rank_by=settings.rank_by)
    mask = np.array(fakes) | np.array(is_new)  # known fakes against new ones
    auroc = lambda knownness: roc_auc(np.array(fakes)[mask].astype(float), np.asarray(knownness)[mask])  # noqa: E731
    return {
        "alpha": settings.alpha,
        "auroc": auroc([max(r.p_values.values(), default=0.0) for r in results]),  # best p-value: how "known"
        "auroc_rule": auroc([rule_knownness(r, settings.rank_by) for r in results]),
        "unknown_rate": float(np.mean([a == "unknown" for a, new in zip(full, is_new) if new])),
        "answered_real_rate": float(np.mean([a == REAL for a, new in zip(full, is_new) if new])),
        "known_accuracy_closed": accuracy(closed, truth, is_known),
        "known_accuracy_open": accuracy(full, truth, is_known),
        "known_accuracy_drop": accuracy(closed, truth, is_known) - accuracy(full, truth, is_known),
        "known_accuracy_lost": lost_by_reason(results, closed, truth, is_known),
        "wrong_source_closed": wrong_source_rate(closed, truth, known, is_known),
        "wrong_source_open": wrong_source_rate(full, truth, known, is_known),
        "coverage": float(np.mean([t in r.prediction_set for r, t, f in zip(results, truth, fakes) if f])),
        "conformal_coverage": float(np.mean([conformally_kept(r, t, settings.alpha) for r, t, f in zip(results, truth, fakes) if f])),
        **({"coverage_by_group": coverage_by_group(results, truth, fakes, groups, settings.alpha)} if groups else {}),
    }


def rule_knownness(result: ImageAttribution, rank_by: str) -> float:
    """How "known" the rule finds an image: the best-ranked source's smaller p-value, of its score and of its
    typicality (the two tests it must pass to be named); 0 when no source answered."""
    ranking = result.ranking(rank_by)
    if not ranking:
        return 0.0
    best = max(ranking, key=ranking.get)
    return min(result.p_values.get(best, 1.0), result.typicality_p_values.get(best, 1.0))


def lost_by_reason(results: list[ImageAttribution], closed: list[str], truth: list[str], mask: list[bool]) -> dict[str, float]:
    """The known images the closed set answers right and the full rule does not, as shares of all known images,
    by the rule's exit that gave the answer (`rule.REASONS`; `best_source` there means another source was named,
    its own having been excluded or below its threshold). The shares add up to at least the accuracy drop."""
    lost = dict.fromkeys(REASONS, 0)  # every exit, so that means over seeds never miss one
    for result, answer, true, counted in zip(results, closed, truth, mask):
        if counted and answer == true and result.attribution != true:
            lost[result.reason] += 1
    return {reason: count / max(sum(mask), 1) for reason, count in lost.items()}


def wrong_source_rate(answers: list[str], truth: list[str], sources: list[str], mask: list[bool]) -> float:
    """The share of (known) images answered with a source that did not make them: the answer that accuses an organisation."""
    accused = [a in sources and a != t for a, t, counted in zip(answers, truth, mask) if counted]
    return float(np.mean(accused)) if accused else float("nan")


def coverage_by_group(results: list[ImageAttribution], truth: list[str], fakes: list[bool], groups: list[str],
                      alpha: float) -> dict[str, Any]:
    """Conformal coverage (`conformally_kept`) of each (source, photo) among known-source fakes: the guarantee
    is per photo, so its mean over photos, its lowest quartile and its lowest are what a reader can trust."""
    covered: dict[tuple[str, str], list[bool]] = {}
    for result, source, fake, group in zip(results, truth, fakes, groups):
        if fake:
            covered.setdefault((source, group), []).append(conformally_kept(result, source, alpha))
    rates = np.array([np.mean(flags) for flags in covered.values()])
    return {"groups": len(rates), "mean": float(rates.mean()), "min": float(rates.min()),
            "quartile_low": float(np.quantile(rates, 0.25))} if len(rates) else {"groups": 0}


def per_source_recall(predicted: list[str], truth: list[str], sources: list[str]) -> dict[str, float]:
    return {s: accuracy(predicted, truth, [t == s for t in truth]) for s in sources}

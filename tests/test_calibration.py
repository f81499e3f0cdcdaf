"""Platt and temperature scaling: fitted on held-out scores, they must improve a miscalibrated score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special

from shared_backbone.training.classification_metrics import log_loss, roc_auc
from shared_backbone.model.calibration import Calibration, fit_calibration


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from a true probability p; the score is overconfident and biased: sigmoid(3 logit p + 1.5)."""
    rng = np.random.default_rng(seed)
    logit_p = rng.normal(0, 1.5, n)
    labels = (rng.uniform(size=n) < scipy.special.expit(logit_p)).astype(float)
    return scipy.special.expit(3 * logit_p + 1.5), labels


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibration_improves_held_out_log_loss(method):
    fit_raw, fit_labels = _miscalibrated(4000, 0)
    test_raw, test_labels = _miscalibrated(4000, 1)
    calibration = fit_calibration(fit_raw, fit_labels, method)
    before, after = log_loss(test_labels, test_raw), log_loss(test_labels, calibration.apply(test_raw))
    assert after < before - 0.05, (before, after)
    assert calibration.a == pytest.approx(1 / 3, abs=0.08)  # undoes the 3x overconfidence
    if method == "platt":
        assert calibration.b == pytest.approx(-0.5, abs=0.15)  # and the +1.5 bias (1.5 / 3)
    else:
        assert calibration.b == 0.0
    # monotonic: ranking (and so ROC-AUC) unchanged
    assert roc_auc(test_labels, calibration.apply(test_raw)) == pytest.approx(roc_auc(test_labels, test_raw))


def test_identity_and_round_trip():
    assert fit_calibration(np.array([0.2, 0.8]), np.array([0, 1]), "identity") == Calibration()
    calibration = Calibration("platt", 0.5, -0.2)
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    np.testing.assert_allclose(Calibration().apply([0.1, 0.9]), [0.1, 0.9])


def test_calibration_refuses_one_class_and_unknown_methods():
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.array([0.3, 0.6]), np.array([1, 1]), "platt")
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibration(np.array([0.3, 0.6]), np.array([0, 1]), "isotonic")
    with pytest.raises(ValueError, match="unknown calibration method"):
        Calibration.from_dict({"method": "isotonic", "a": 1, "b": 0})


def test_calibration_is_bounded_and_capped_below_one():
    """A perfectly separated head must not get an infinite slope, and no score may reach 1."""
    raw = np.concatenate([np.full(50, 0.001), np.full(50, 0.999)])
    labels = np.concatenate([np.zeros(50), np.ones(50)])
    calibration = fit_calibration(raw, labels, "platt")
    assert 0 < calibration.a <= 50 and abs(calibration.b) <= 30
    scores = calibration.apply(np.array([0.0, 1.0, 1 - 1e-9]))
    assert scores.max() < 1.0 and scores.min() > 0.0
    assert scores[1] == scores[2]  # saturated raw scores tie (the rule calls it ambiguous)
    steep = Calibration("platt", 50.0, 30.0).apply(np.array([0.9, 0.99]))
    assert steep[0] == steep[1] < 1.0  # the cap: a confident head cannot out-claim another by saturating


def test_calibration_is_balanced_so_class_mixes_do_not_shift_the_scale():
    """Two nodes with the same head but 1:1 and 1:9 held-out mixes get the same map (equal prior)."""
    rng = np.random.default_rng(3)
    positives, negatives = rng.beta(6, 2, 400), rng.beta(2, 6, 3600)
    balanced = fit_calibration(np.concatenate([positives, negatives[:400]]), np.r_[np.ones(400), np.zeros(400)])
    skewed = fit_calibration(np.concatenate([positives, negatives]), np.r_[np.ones(400), np.zeros(3600)])
    probe = np.linspace(0.05, 0.95, 10)
    np.testing.assert_allclose(balanced.apply(probe), skewed.apply(probe), atol=0.05)


@pytest.mark.parametrize("values, match", [
    ({"method": "platt", "a": 0.0, "b": 50.0}, "slope"),
    ({"method": "platt", "a": -1.0, "b": 0.0}, "slope"),
    ({"method": "platt", "a": float("nan"), "b": 0.0}, "finite"),
    ({"method": "platt", "a": 1.0, "b": 50.0}, "offset"),
    ({"method": "platt", "a": 1e6, "b": 0.0}, "slope"),
    ({"method": "temperature", "a": 1.0, "b": 2.0}, "does not allow"),
    ({"method": "platt", "a": 1.0, "b": 0.0, "positive_scores": [0.9, 0.1]}, "sorted"),
    ({"method": "platt", "a": 1.0, "b": 0.0, "positive_scores": [float("nan")]}, r"\[0, 1\]"),
    ({"method": "platt", "a": "x", "b": 0.0}, "numbers"),
    ({"method": "platt", "b": 0.0}, "numbers"),
])
def test_invalid_calibrations_are_refused(values, match):
    with pytest.raises(ValueError, match=match):
        Calibration.from_dict(values)


def test_positive_scores_round_trip_and_are_capped_in_number():
    calibration = Calibration("platt", 1.0, 0.0).with_positives(np.random.default_rng(0).uniform(size=10_000))
    assert len(calibration.positive_scores) == 4096
    assert list(calibration.positive_scores) == sorted(calibration.positive_scores)
    assert Calibration.from_dict(calibration.to_dict()) == calibration


@pytest.mark.parametrize("reference,usable", [
    ((), False),
    ((0.3,) * 9, False),  # too few to exclude anything at any usual level
    ((0.0,) * 4096, False),  # nothing above the floor: every score the map can produce gets p-value 1
    ((1e-4,) * 50, False),
    ((0.5,) * 10, True),
    ((0.9999,) * 50, True),  # a saturated honest head: excludes every score below the cap
])
def test_a_degenerate_conformal_reference_is_treated_as_none(reference, usable):
    calibration = Calibration("platt", 1.0, 0.0, positive_scores=reference)
    assert calibration.has_reference is usable
    p_values = calibration.p_values(np.array([1e-4, 0.4, 0.9999]))
    assert (p_values is not None) is usable
    if usable:
        assert p_values[0] < 0.1 and p_values[-1] == 1.0


def test_a_group_balanced_reference_covers_new_photos_where_a_per_patch_one_does_not():
    """Patches of a photo share its level; photos with high scores have many patches. A per-patch reference
    is dominated by them and excludes a new low-scoring photo's patches; weighing photos equally does not."""
    from shared_backbone.model.calibration import group_balanced

    rng = np.random.default_rng(0)

    def photos(count: int) -> list[np.ndarray]:
        levels = rng.normal(0.0, 1.0, count)
        return [1 / (1 + np.exp(-(level + 0.3 * rng.normal(size=50 if level > 0 else 5)))) for level in levels]

    new = photos(400)

    def per_photo_coverage(calibration: Calibration) -> float:
        return float(np.mean([np.mean(calibration.p_values(p) > 0.05) for p in new]))

    balanced, per_patch = [], []
    for _ in range(10):  # over calibration draws: one draw of 60 photos fixes the 5% tail with ~3 of them
        calib = photos(60)
        scores, groups = np.concatenate(calib), np.concatenate([[i] * len(p) for i, p in enumerate(calib)])
        balanced.append(per_photo_coverage(Calibration("identity").with_positives(scores, groups)))
        per_patch.append(per_photo_coverage(Calibration("identity").with_positives(scores)))
        assert len(group_balanced(scores, groups)) == 60 * 50
    assert abs(np.mean(balanced) - 0.95) < 0.02  # measured 0.952 over 20 draws
    assert np.mean(per_patch) < 0.85  # measured 0.713

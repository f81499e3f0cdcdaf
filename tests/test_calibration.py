"""Platt and temperature scaling: fitted on held-out scores, they must improve a miscalibrated score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special

from shared_backbone.experiments.metrics import log_loss, roc_auc
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

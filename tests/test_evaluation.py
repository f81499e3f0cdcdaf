"""Metrics against cases computed by hand, and the report files they feed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from shared_backbone.training import classification_metrics
from shared_backbone.training import reports


def test_binary_metrics_hand_computed():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    scores = [0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.3, 0.8]
    m = classification_metrics.binary_metrics(labels, scores, threshold=0.5)
    # predicted positive: 0.9, 0.6, 0.7, 0.8 -> tp 3 (0.9, 0.6, 0.8), fp 1 (0.7), fn 1 (0.4), tn 3
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # positive/negative pairs ordered correctly: 0.9 > all 4 negatives, 0.8 > 4, 0.6 > 3 (not 0.7), 0.4 > 3 -> 14/16
    assert m["roc_auc"] == pytest.approx(14 / 16)


def test_roc_auc_ties_count_half_and_degenerate_cases():
    assert classification_metrics.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert classification_metrics.roc_auc([1, 1, 0], [0.7, 0.5, 0.5]) == pytest.approx(0.75)
    assert classification_metrics.roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert np.isnan(classification_metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_endpoints_and_auc_agree():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    fpr, tpr, _ = classification_metrics.roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(classification_metrics.roc_auc(labels, scores))


def test_log_loss_hand_computed():
    assert classification_metrics.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)


def test_confusion_matrix_and_multiclass_metrics_hand_computed():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 2]
    matrix = classification_metrics.confusion_matrix(y_true, y_pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    m = classification_metrics.multiclass_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["recall"] == pytest.approx(1.0)
    assert m["macro"]["recall"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def test_multiclass_unknown_predictions_count_as_errors_and_ovr_auc():
    y_true = [0, 1, 1]
    y_pred = [0, 2, 1]  # 2 = "unknown", beyond the two classes
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    m = classification_metrics.multiclass_metrics(y_true, y_pred, ["a", "b"], scores)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert np.array(m["confusion_matrix"]).shape == (3, 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["roc_auc"] == pytest.approx(1.0)


def test_reports_write_csv_json_and_pngs(tmp_path):
    labels = np.array([0, 1, 1, 0])
    scores = np.array([0.2, 0.9, 0.4, float("nan")])
    metrics = classification_metrics.binary_metrics(labels[:3], scores[:3])
    metrics["nan_value"] = float("nan")
    files = reports.write_binary_report(tmp_path, ["a", "b", "c"], labels[:3], scores[:3], metrics, name="t", title="t")
    with open(files["predictions"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["predicted"] for r in rows] == ["real", "fake", "real"]
    assert json.loads(open(files["metrics"]).read())["nan_value"] is None
    for key in ("confusion_matrix", "roc"):
        assert open(files[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    multi = classification_metrics.multiclass_metrics([0, 1, 2], [0, 3, 2], ["x", "y", "z"])
    out = reports.write_multiclass_report(
        tmp_path, ["1", "2", "3"], ["x", "y", "z"], np.array([0, 1, 2]), np.array([0, 3, 2]), multi,
        name="m", title="m", scores=np.eye(3), extra_predicted=["unknown"],
    )
    with open(out["predictions"]) as handle:
        assert [r["predicted"] for r in csv.DictReader(handle)] == ["x", "unknown", "z"]
    assert open(out["roc"], "rb").read(4) == b"\x89PNG"


def test_coverage_by_group_is_per_source_and_photo_over_known_fakes():
    """The guarantee's event: the true source's p-value above alpha (or none), whatever the detector says."""
    from attribnet.bench.accuracy.evaluate import coverage_by_group, open_set_metrics
    from shared_backbone.model.rule import ImageAttribution, RuleSettings

    def answer(p_a: float, p_b: float, fake: float = 0.9) -> ImageAttribution:
        return ImageAttribution(fake_score=fake, raw={"a": 0.5, "b": 0.5}, p_values={"a": p_a, "b": p_b},
                                prediction_set=[s for s, p in (("a", p_a), ("b", p_b)) if p > 0.05 and fake >= 0.5])

    results = [answer(0.5, 0.01), answer(0.3, 0.01, fake=0.1), answer(0.01, 0.5), answer(0.01, 0.9), answer(0.5, 0.01),
               answer(0.5, 0.5)]
    truth = ["a", "a", "a", "b", "b", "real"]
    fakes = [True, True, True, True, True, False]
    groups = ["p1", "p1", "p2", "p1", "p1", "p1"]
    # (a, p1): 2 of 2 (the second is called real: not in its prediction set, but its p-value keeps it);
    # (a, p2): 0 of 1; (b, p1): 1 of 2; the real image is not a known fake
    got = coverage_by_group(results, truth, fakes, groups, 0.05)
    assert got["groups"] == 3 and got["mean"] == pytest.approx((1 + 0 + 0.5) / 3) and got["min"] == 0.0
    assert coverage_by_group(results, truth, [False] * 6, groups, 0.05) == {"groups": 0}
    metrics = open_set_metrics(results, truth, ["a", "b"], RuleSettings(alpha=0.05), groups)
    assert metrics["conformal_coverage"] == pytest.approx(3 / 5) and metrics["coverage"] == pytest.approx(2 / 5)


def test_open_set_drop_is_against_the_rules_own_order_and_split_by_the_rules_exits():
    """Hand-made answers: the closed set the drop is measured against ranks as the rule does (raw here, where
    the calibrated argmax of image 1 is wrong), each lost image is counted under the exit that lost it, and
    the rule's own knownness (the best source's smaller p-value) ranks the unseen image last."""
    from attribnet.bench.accuracy.evaluate import open_set_metrics
    from shared_backbone.model.rule import ImageAttribution, RuleSettings

    def answer(raw, calibrated, attribution, reason, p_values, typicality_p_values=None, fake=0.9):
        return ImageAttribution(fake_score=fake, raw=raw, calibrated=calibrated, attribution=attribution, reason=reason,
                                p_values=p_values, typicality_p_values=typicality_p_values or {})

    results = [
        answer({"a": 0.9, "b": 0.6}, {"a": 0.4, "b": 0.7}, "a", "best_source", {"a": 0.7, "b": 0.3}),
        answer({"a": 0.9, "b": 0.2}, {"a": 0.9, "b": 0.2}, "unknown", "atypical", {"a": 0.5, "b": 0.1}, {"a": 0.02}),
        answer({"a": 0.3, "b": 0.8}, {"a": 0.6, "b": 0.8}, "a", "best_source", {"a": 0.2, "b": 0.03}),  # b excluded
        answer({"a": 0.9, "b": 0.9}, {"a": 0.9, "b": 0.9}, "real", "detector_real", {}, fake=0.1),
        answer({"a": 0.9, "b": 0.1}, {"a": 0.9, "b": 0.1}, "unknown", "atypical", {"a": 0.5, "b": 0.1}, {"a": 0.01}),
        answer({"a": 0.8, "b": 0.1}, {"a": 0.8, "b": 0.1}, "a", "best_source", {"a": 0.6, "b": 0.1}, {"a": 0.8}),
    ]
    truth = ["a", "a", "b", "real", "c", "a"]  # c: a generator no node holds
    metrics = open_set_metrics(results, truth, ["a", "b"], RuleSettings(rank_by="raw"))
    assert metrics["known_accuracy_closed"] == 1.0  # by the calibrated argmax image 1 would be lost: 0.8
    assert metrics["known_accuracy_open"] == pytest.approx(3 / 5) and metrics["known_accuracy_drop"] == pytest.approx(2 / 5)
    lost = {reason: share for reason, share in metrics["known_accuracy_lost"].items() if share}
    assert lost == {"atypical": pytest.approx(1 / 5), "best_source": pytest.approx(1 / 5)}
    assert metrics["wrong_source_closed"] == 0.0 and metrics["wrong_source_open"] == pytest.approx(1 / 5)
    assert metrics["unknown_rate"] == 1.0
    assert metrics["auroc"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)  # best p-values .7 .5 .2 .6 against the unseen .5
    assert metrics["auroc_rule"] == 1.0  # .7 .02 .03 .6 against the unseen image's min(.5, .01)
    calibrated = open_set_metrics(results, truth, ["a", "b"], RuleSettings(rank_by="calibrated"))
    assert calibrated["known_accuracy_closed"] == pytest.approx(4 / 5)

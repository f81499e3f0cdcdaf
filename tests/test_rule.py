"""The attribution rule: every branch, unequal thresholds, ties, and conformal coverage on synthetic scores."""

from __future__ import annotations

import numpy as np
import pytest

from shared_backbone.model.calibration import Calibration
from shared_backbone.model.rule import (AMBIGUOUS, REAL, REASONS, UNKNOWN, RuleSettings, attribute_batch, closed_set, decide,
                                        out_of_scope)


def test_the_detector_decides_real_first():
    assert decide(0.49, {"a": 0.99}, {"a": 0.5}).attribution == REAL
    assert decide(0.49, {"a": 0.99}, {"a": 0.5}).prediction_set == []
    assert decide(0.5, {"a": 0.99}, {"a": 0.5}).attribution == "a"


def test_unequal_thresholds_pick_the_best_source_that_clears_its_own():
    thresholds = {"a": 0.9, "b": 0.3}
    # a scores higher but is below its own (strict) threshold; b clears its (lenient) one
    decision = decide(0.9, {"a": 0.8, "b": 0.6}, thresholds)
    assert decision.attribution == "b"
    assert decision.prediction_set == ["a", "b"]  # the set is conformal only; thresholds gate candidates
    assert decide(0.9, {"a": 0.95, "b": 0.6}, thresholds).attribution == "a"
    assert decide(0.9, {"a": 0.8, "b": 0.2}, thresholds).attribution == UNKNOWN


def test_no_answer_is_unknown():
    assert decide(0.9, {}, {}).attribution == UNKNOWN


def test_ties_and_near_ties_are_ambiguous_never_decided_by_name():
    thresholds = {"a": 0.5, "b": 0.5}
    for names in (("a", "b"), ("b", "a")):
        scores = {names[0]: 0.9, names[1]: 0.9}
        assert decide(0.9, scores, thresholds).attribution == AMBIGUOUS
    # the margin is on the log-odds scale: 0.905 vs 0.9 is odds 9.5 vs 9 (0.054 apart): a near-tie
    assert decide(0.9, {"a": 0.905, "b": 0.9}, thresholds, margin=0.1).attribution == AMBIGUOUS
    assert decide(0.9, {"a": 0.93, "b": 0.9}, thresholds, margin=0.1).attribution == "a"
    # near 1 the log-odds still tell 0.999 from 0.9999 (odds 999 vs 9999), where a margin on the
    # probability would call every confident pair a tie
    assert decide(0.9, {"a": 0.9999, "b": 0.999}, thresholds, margin=0.1).attribution == "a"
    # a near-tie with a source that does not clear its threshold is no tie
    assert decide(0.9, {"a": 0.9, "b": 0.899}, {"a": 0.5, "b": 0.95}, margin=0.1).attribution == "a"
    assert closed_set(0.9, {"a": 0.7, "b": 0.7}).attribution == AMBIGUOUS
    assert closed_set(0.9, {"a": 0.7, "b": 0.69}).attribution == "a"


def test_p_values_gate_the_prediction_set():
    scores, thresholds = {"a": 0.9, "b": 0.8}, {"a": 0.5, "b": 0.5}
    decision = decide(0.9, scores, thresholds, p_values={"a": 0.01, "b": 0.4}, alpha=0.05)
    assert decision.prediction_set == ["b"] and decision.attribution == "b"
    decision = decide(0.9, scores, thresholds, p_values={"a": 0.01, "b": 0.02}, alpha=0.05)
    assert decision.prediction_set == [] and decision.attribution == UNKNOWN
    # a head without held-out positives has no p-value and stays in the set
    assert decide(0.9, scores, thresholds, p_values={"b": 0.01}, alpha=0.05).prediction_set == ["a"]


def test_closed_set_is_the_papers_argmax():
    assert closed_set(0.9, {"a": 0.2, "b": 0.1}).attribution == "a"  # below any threshold: still the argmax
    assert closed_set(0.1, {"a": 0.9}).attribution == REAL


def test_rule_settings_refuse_out_of_range_values():
    with pytest.raises(ValueError, match="alpha"):
        RuleSettings(alpha=1.5)


def test_conformal_coverage_holds_on_synthetic_scores():
    """Held-out positives and new positives from one distribution: own source rejected at rate <= alpha.

    400 reference scores, 20,000 new ones; the miss rate is within 1 point of alpha (binomial sd
    ~0.15 points at alpha 0.05), and never above alpha by more than that.
    """
    rng = np.random.default_rng(0)
    draw = lambda n: np.clip(rng.beta(8, 2, n), 1e-4, 1 - 1e-4)  # noqa: E731 - a positive's calibrated score
    calibration = Calibration("platt", 1.0, 0.0).with_positives(draw(400))
    new = draw(20_000)
    for alpha in (0.01, 0.05, 0.1, 0.2):
        missed = float(np.mean(calibration.p_values(new) <= alpha))
        assert missed <= alpha + 0.01 and missed >= alpha - 0.02, (alpha, missed)
    # images of another distribution (lower scores) are rejected far more often
    other = np.clip(rng.beta(2, 5, 5000), 1e-4, 1 - 1e-4)
    assert np.mean(calibration.p_values(other) <= 0.05) > 0.8


def test_attribute_batch_applies_calibration_p_values_and_rule():
    fake = np.array([0.9, 0.9, 0.1])
    raw = {"a": np.array([0.9, 0.2, 0.9]), "b": np.array([0.3, 0.25, 0.1])}
    calibrations = {
        "a": Calibration("platt", 1.0, 0.0).with_positives(np.linspace(0.5, 0.99, 99)),
        "b": Calibration("platt", 1.0, 0.0),
    }
    results = attribute_batch(fake, raw, calibrations, {"a": 0.5, "b": 0.5}, RuleSettings(alpha=0.05))
    assert [r.attribution for r in results] == ["a", UNKNOWN, REAL]
    assert results[0].p_values["a"] == pytest.approx((1 + 80) / 100, abs=0.02) and "b" not in results[0].p_values
    assert results[1].prediction_set == ["b"]  # a's p-value of 0.2 is 0.01: out; b (no reference) kept but below 0.5
    assert results[1].calibrated["a"] == pytest.approx(0.2)


def test_a_winner_must_find_the_image_typical():
    scores, thresholds = {"a": 0.9, "b": 0.6}, {"a": 0.5, "b": 0.5}
    typical = decide(0.9, scores, thresholds, typicality_p_values={"a": 0.4, "b": 0.001}, typicality_alpha=0.05)
    assert typical.attribution == "a"
    atypical = decide(0.9, scores, thresholds, typicality_p_values={"a": 0.01, "b": 0.6}, typicality_alpha=0.05)
    assert atypical.attribution == UNKNOWN  # the runner-up does not inherit the image
    assert atypical.prediction_set == ["a", "b"]  # the prediction set is the scores' business
    everywhere = decide(0.9, scores, thresholds, typicality_p_values={"a": 0.01, "b": 0.01}, typicality_alpha=0.05)
    assert everywhere.attribution == UNKNOWN
    assert decide(0.2, scores, thresholds, typicality_p_values={"a": 0.01}).attribution == REAL  # the detector first


def test_a_head_without_a_typicality_reference_is_not_gated():
    scores, thresholds = {"paper": 0.9, "b": 0.6}, {"paper": 0.5, "b": 0.5}
    assert decide(0.9, scores, thresholds, typicality_p_values={"b": 0.001}, typicality_alpha=0.05).attribution == "paper"


def test_a_tie_is_unknown_when_both_find_the_image_atypical():
    scores, thresholds = {"a": 0.8, "b": 0.8}, {"a": 0.5, "b": 0.5}
    assert decide(0.9, scores, thresholds, typicality_p_values={"a": 0.01, "b": 0.3}).attribution == AMBIGUOUS
    assert decide(0.9, scores, thresholds, typicality_p_values={"a": 0.001, "b": 0.001}).attribution == UNKNOWN


def test_every_answer_names_the_exit_of_the_rule_that_gave_it():
    thresholds = {"a": 0.5, "b": 0.5}
    cases = {
        "detector_real": decide(0.2, {"a": 0.9}, thresholds),
        "no_candidate": decide(0.9, {"a": 0.4, "b": 0.3}, thresholds),
        "tie": decide(0.9, {"a": 0.8, "b": 0.8}, thresholds),
        "atypical_tie": decide(0.9, {"a": 0.8, "b": 0.8}, thresholds, typicality_p_values={"a": 0.01, "b": 0.01}),
        "atypical": decide(0.9, {"a": 0.9, "b": 0.6}, thresholds, typicality_p_values={"a": 0.01}),
        "best_source": decide(0.9, {"a": 0.9, "b": 0.6}, thresholds, typicality_p_values={"a": 0.5}),
    }
    for reason, decision in cases.items():
        assert decision.reason == reason, (reason, decision)
    assert [cases[r].attribution for r in cases] == [REAL, UNKNOWN, AMBIGUOUS, UNKNOWN, UNKNOWN, "a"]
    assert out_of_scope("too small").reason == "out_of_scope"
    assert set(REASONS) == {*cases, "out_of_scope"}  # every code is an exit, every exit a code
    results = attribute_batch(np.array([0.9, 0.1]), {"a": np.array([0.9, 0.9])}, {"a": Calibration()}, thresholds)
    assert [r.reason for r in results] == ["best_source", "detector_real"]


def test_attribute_batch_turns_typicality_into_p_values_and_ignores_degenerate_references():
    reference = tuple(-float(v) for v in np.linspace(10, 1, 19))  # 19 values: p-values in steps of 1/20
    calibrations = {"a": Calibration(typicality_scores=reference), "b": Calibration(typicality_scores=(-1.0,) * 30)}
    raw = {"a": np.array([0.9, 0.9]), "b": np.array([0.2, 0.2])}
    typicality = {"a": np.array([-2.0, -50.0]), "b": np.array([-1.0, -1.0])}
    results = attribute_batch(np.array([0.9, 0.9]), raw, calibrations, {"a": 0.5, "b": 0.5},
                              RuleSettings(typicality_alpha=0.05), typicality)
    assert results[0].typicality_p_values == {"a": pytest.approx(18 / 20)}  # 17 of 19 at most -2; b's all-equal reference: no p-value
    assert results[0].typicality == {"a": -2.0, "b": -1.0}
    assert results[0].attribution == "a"
    assert results[1].typicality_p_values["a"] == pytest.approx(1 / 20) and results[1].attribution == UNKNOWN


def test_typicality_alpha_is_range_checked():
    with pytest.raises(ValueError, match="typicality_alpha"):
        RuleSettings(typicality_alpha=1.5)


def test_sources_are_ranked_by_raw_scores_unless_told_otherwise():
    """Calibration decides whether a source may be named, `rank_by` which one is: a head calibrated
    to a flatter scale does not lose an image its raw score wins (the paper's argmax)."""
    raw = {"a": np.array([0.95]), "b": np.array([0.9])}
    calibrations = {"a": Calibration("platt", 0.5, 0.0), "b": Calibration("platt", 1.0, 0.0)}  # a: 0.81, b: 0.90
    thresholds = {"a": 0.5, "b": 0.5}
    by_raw = attribute_batch(np.array([0.9]), raw, calibrations, thresholds, RuleSettings(margin=0.0))[0]
    by_calibrated = attribute_batch(np.array([0.9]), raw, calibrations, thresholds,
                                    RuleSettings(margin=0.0, rank_by="calibrated"))[0]
    assert by_raw.calibrated["a"] < by_raw.calibrated["b"]
    assert (by_raw.attribution, by_raw.prediction_set) == ("a", ["a", "b"])
    assert (by_calibrated.attribution, by_calibrated.prediction_set) == ("b", ["b", "a"])
    # the threshold stays on the calibrated scale: a head calibrated below its threshold is never named
    strict = attribute_batch(np.array([0.9]), raw, calibrations, {"a": 0.85, "b": 0.95}, RuleSettings())[0]
    assert strict.attribution == UNKNOWN
    with pytest.raises(ValueError, match="rank_by"):
        RuleSettings(rank_by="median")

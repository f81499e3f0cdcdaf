"""`attribnet bench accuracy`'s generalisation protocols end to end on a tiny zoo: the fully private
setting, leave-one-family-out, the out-of-scope corpus and the robustness oracle report what the
interface promises, the roles really leave the family out, the oracle really trains on perturbed
data, and a second run resumes from the stored results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from attribnet.cli import main

CONFIG = """
accuracy:
  zoo: {image_size: 32, per_source: 40, preset: easy, workers: 1,
        sources: [tconv_a, pixshuffle_a, tconv_r, modconv_a]}
  data: {image_size: 32, mode: dct}
  roles: {nodes: [tconv_a, pixshuffle_a], late: [pixshuffle_a], coordinator: [tconv_r], held_out: [modconv_a]}
  seeds: [0]
  primary: {epochs: 2, batch_size: 16, learning_rate: 0.003, patience: 3, min_epochs: 1}
  head: {epochs: 2, batch_size: 32, learning_rate: 0.003, patience: 3, min_epochs: 1}
  baseline: {epochs: 1, batch_size: 16, learning_rate: 0.003, patience: 3, min_epochs: 1}
  negatives: {count: 24, generators: 3}
  perturb_copies: 1
  test_perturbations: {jpeg: 75}
  baselines: [gdaconv]
  protocols: [private, private_finetune, lofo, out_of_scope, oracle, spectral_template]
  federation: {finetune_rounds: 1, finetune_epochs: 1, gate_tolerance: 1.0}
  lofo_families: [tconv]
  out_of_scope_per_kind: 4
  alpha: 0.1
"""


def _run(root: Path) -> dict:
    code = main(["bench", "accuracy", "--config", str(root / "bench.yaml"), "--out", str(root / "results"),
                 "--benchmarks-md", str(root / "BENCHMARKS.md")])
    assert code == 0
    return json.loads((root / "results" / "accuracy.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("generalisation")
    (root / "bench.yaml").write_text(CONFIG)
    return _run(root), root


def test_leave_one_family_out_and_out_of_scope_are_reported(run):
    result, root = run
    tconv = result["leave_one_family_out"]["tconv"]
    assert tconv["sources"] == ["tconv_a"]
    for key in ("heads_calibrated", "heads_raw", "gdaconv", "heads_calibrated_founding", "spectral_template", "detected"):
        assert 0.0 <= tconv[key] <= 1.0, (key, tconv)
    assert set(result["out_of_scope"]) and all(0.0 <= row["pinned_rate"] <= 1.0 and row["images"] > 0
                                               for row in result["out_of_scope"].values())
    assert {"known_accuracy", "coverage", "alpha"} <= set(result["out_of_scope_known"])
    tiny = result["out_of_scope"]["tiny"]  # 8-15 px: out of scope for the gateway, so here too, never upscaled
    assert tiny["refused_rate"] == 1.0 and tiny["pinned_rate"] == 0.0
    assert 0.0 <= result["private"]["heads_calibrated"] <= 1.0 and "open_set" in result["private"]
    assert 0.0 <= result["private"]["heads_templates_borda"] <= 1.0  # the templates beside the private heads
    tuned = result["per_seed"][0]["private_finetuned"]  # every node's update averaged into a signed child bundle
    assert tuned["finetune"]["published"] and tuned["finetune"]["rounds"][0]["examples"] > 0
    assert 0.0 <= tuned["heads_raw"] <= 1.0 and set(tuned["out_of_scope"]) == set(result["out_of_scope"])
    assert "clean" in result and "open_set" in result  # the founding setting's keys stay
    text = (root / "BENCHMARKS.md").read_text()
    assert "Fully private setting" in text and "Leave one family out" in text and "| tconv | tconv_a |" in text
    assert "| fully private + federated fine-tuning |" in text and "spectral templates (no backbone)" in text
    assert "| strict heads + spectral templates, Borda count |" in text
    assert "Out of scope" in text and "on every node's source" in text


def test_the_roles_leave_the_family_out(run):
    """The report names what each part trained on, and the trained models' own records agree with it."""
    result, root = run
    settings = result["per_seed"][0]["settings"]
    lofo, private, founding = settings["lofo-tconv"], settings["private"], settings["founding"]
    assert lofo["detector_sources"] == lofo["trunk_sources"] == ["real", "pixshuffle_a"]
    assert lofo["reference_sources"] == ["real"] and lofo["negatives_exclude_families"] == ["tconv"]
    assert private["detector_sources"] == ["real", "tconv_r"] and private["negatives_exclude_families"] == []
    assert settings["private_finetuned"]["trunk_sources"][:2] == ["real", "tconv_r"]
    assert "federated fine-tuning" in settings["private_finetuned"]["trunk_sources"][2]
    assert set(founding["detector_sources"]) == {"real", "tconv_a", "pixshuffle_a", "tconv_r"}
    (work,) = (root / "results" / "work" / "seed-0").glob("lofo-tconv-*")  # one configuration, one folder
    primary = yaml.safe_load((work / "primary-lofo-tconv" / "config.yaml").read_text())
    assert sorted(p.name for p in Path(primary["data"]["root"]).iterdir() if p.is_dir()) == ["pixshuffle_a", "real"]
    head_configs = sorted(work.glob("heads-strict-*/*/runs/*/config.yaml"))
    assert len(head_configs) == 2
    for path in head_configs:
        node = yaml.safe_load(path.read_text())
        assert node["negatives"]["exclude_families"] == ["tconv"]
        reference = json.loads((Path(node["reference"]) / "reference.json").read_text())
        assert sorted(reference["sources"]) == ["real"], path


def test_a_second_run_resumes_from_the_stored_results(run, caplog):
    result, root = run
    caplog.set_level("INFO")
    again = _run(root)
    assert again["leave_one_family_out"] == result["leave_one_family_out"] and again["private"] == result["private"]
    assert again["out_of_scope"] == result["out_of_scope"] and again["oracle"] == result["oracle"]
    # founding, private, private_finetuned, lofo-tconv, oracle-jpeg
    assert sum("results of an earlier run" in r.getMessage() for r in caplog.records) == 5


def test_the_oracle_trains_and_tests_on_the_perturbed_copy(run):
    """Every model of the oracle read the JPEG'd copy: its detector's view links into it, and the copy's images
    are the originals as the evaluation perturbs them (same names, hence the same split)."""
    import numpy as np

    from shared_backbone.data.perturbations import perturb_fixed
    from shared_backbone.model.preprocessing import load_image

    result, root = run
    assert set(result["oracle"]) == {"jpeg"}
    assert {"detection", "heads_raw", "heads_calibrated", "gdaconv"} <= set(result["oracle"]["jpeg"])
    assert all(0.0 <= v <= 1.0 for v in result["oracle"]["jpeg"].values()), result["oracle"]
    work = root / "results" / "work"
    copy = work / "oracle-data" / "jpeg-75"
    (oracle,) = (work / "seed-0").glob("oracle-jpeg-*")
    primary = yaml.safe_load((oracle / "primary-clean" / "config.yaml").read_text())
    assert {p.resolve().parent for p in Path(primary["data"]["root"]).iterdir() if p.is_dir()} == {copy.resolve()}
    original = next((work / "zoo" / "tconv_a").glob("*.png"))
    expected = perturb_fixed(load_image(original, 32), "jpeg", 75)
    assert np.array_equal(load_image(copy / "tconv_a" / original.name, 32), expected)
    text = (root / "BENCHMARKS.md").read_text()
    assert "Robustness against an oracle" in text and "| jpeg 75 |" in text


def test_runs_of_other_configurations_keep_their_results_apart(tmp_path):
    """Another input mode in the same workdir (the res128 profile run once per mode) must not evict a finished
    setting's results, and a result stored under one configuration is never read for another."""
    import dataclasses

    from attribnet.bench.accuracy.config import AccuracyConfig
    from attribnet.bench.accuracy.seed_run import _fingerprint, _store, _stored, result_path

    dct = AccuracyConfig()
    residual = dataclasses.replace(dct, data=dataclasses.replace(dct.data, mode="residual"))
    prints = [_fingerprint(c, ["x"]) for c in (dct, residual)]
    paths = [result_path(tmp_path, 0, "founding", p) for p in prints]
    assert paths[0] != paths[1]
    _store(paths[0], prints[0], {"accuracy": 0.5})
    _store(paths[1], prints[1], {"accuracy": 0.7})
    assert _stored(paths[0], prints[0]) == {"accuracy": 0.5} and _stored(paths[1], prints[1]) == {"accuracy": 0.7}
    assert _stored(paths[0], prints[1]) is None


def test_results_of_older_evaluation_code_are_never_read(tmp_path, monkeypatch):
    """A workdir keeps its results across code changes; a change of what the results mean raises RESULTS_VERSION,
    and a result stored under the old version is then trained and evaluated again, not read."""
    from attribnet.bench.accuracy import seed_run
    from attribnet.bench.accuracy.config import AccuracyConfig

    old = seed_run._fingerprint(AccuracyConfig(), ["x"])
    seed_run._store(seed_run.result_path(tmp_path, 0, "founding", old), old, {"accuracy": 0.5})
    monkeypatch.setattr(seed_run, "RESULTS_VERSION", seed_run.RESULTS_VERSION + 1)
    new = seed_run._fingerprint(AccuracyConfig(), ["x"])
    assert new != old and seed_run._stored(seed_run.result_path(tmp_path, 0, "founding", new), new) is None

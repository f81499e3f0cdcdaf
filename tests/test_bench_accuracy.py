"""`attribnet bench accuracy` end to end on a tiny zoo: every protocol runs and reports what the interface promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attribnet.cli import main

CONFIG = """
accuracy:
  zoo: {image_size: 32, per_source: 32, preset: easy, workers: 1,
        sources: [tconv_a, pixshuffle_a, bilinear_r, modconv_a]}
  data: {image_size: 32, mode: dct}
  roles: {nodes: [tconv_a, pixshuffle_a], late: [pixshuffle_a], coordinator: [bilinear_r], held_out: [modconv_a]}
  seeds: [0]
  primary: {epochs: 4, batch_size: 16, learning_rate: 0.003, patience: 3, min_epochs: 3}
  robust_primary: {epochs: 1, batch_size: 16, learning_rate: 0.001, patience: 3, min_epochs: 1}
  head: {epochs: 4, batch_size: 32, learning_rate: 0.003, patience: 3, min_epochs: 2}
  baseline: {epochs: 3, batch_size: 16, learning_rate: 0.003, patience: 3, min_epochs: 2}
  negatives: {count: 40, generators: 4}
  perturb_copies: 1
  test_perturbations: {jpeg: 75, multi: 0.5}
  baselines: [gdaconv, dctlinear]
  alpha: 0.1
  protocols: [shared, robust, late_join, spectral_template]
"""
TEMPLATE_METHODS = {"spectral_template", "heads_templates_borda"}
METHODS = {"detection", "heads_raw", "heads_calibrated", "heads_shared", "gdaconv", "dct_linear", *TEMPLATE_METHODS}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("bench")
    (root / "bench.yaml").write_text(CONFIG)
    benchmarks = root / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\n## Serving\n\nkept as is\n")
    code = main(["bench", "accuracy", "--config", str(root / "bench.yaml"), "--out", str(root / "results"),
                 "--benchmarks-md", str(benchmarks), "--json"])
    assert code == 0
    return json.loads((root / "results" / "accuracy.json").read_text()), benchmarks


def test_every_field_the_interface_promises(report):
    result, _ = report
    assert set(result["clean"]) >= METHODS
    assert set(result["perturbed"]) == {"jpeg", "multi"} and all(set(row) >= METHODS for row in result["perturbed"].values())
    assert set(result["robust_trained"]["clean"]) >= METHODS - TEMPLATE_METHODS  # templates are fitted once, on clean images
    assert all(set(result["per_seed"][0]["per_source"][m]) == {"tconv_a", "pixshuffle_a"} for m in TEMPLATE_METHODS)
    for row in [result["clean"], *result["perturbed"].values(), result["robust_trained"]["clean"]]:
        assert all(0.0 <= value <= 1.0 for value in row.values()), row
    assert {"auroc", "unknown_rate", "known_accuracy_drop", "alpha", "coverage"} <= set(result["open_set"])
    assert result["open_set"]["alpha"] == 0.1 and 0.0 <= result["open_set"]["coverage"] <= 1.0
    assert {"joined_accuracy", "founding_accuracy"} <= set(result["late_join"])
    assert result["late_join"]["joined"] == ["pixshuffle_a"]


def test_the_models_learn_and_nothing_leaks(report):
    """Chance is 1/3 over real + 2 nodes: the network and the baselines must do far better on clean images."""
    result, _ = report
    assert result["clean"]["detection"] >= 0.8, result["clean"]
    assert result["clean"]["heads_calibrated"] >= 0.5 and result["clean"]["gdaconv"] >= 0.5, result["clean"]
    assert result["clean"]["spectral_template"] >= 0.5, result["clean"]
    dataset = result["dataset"]
    assert dataset["roles"]["held_out"] == ["modconv_a"] and "modconv_a" not in dataset["reference"]
    assert "bilinear_r (" in dataset["reference"] and "coordinator's own generator" in dataset["reference"]


def test_benchmarks_md_gets_the_table_and_keeps_other_sections(report):
    _, benchmarks = report
    text = benchmarks.read_text()
    assert "## Serving\n\nkept as is" in text and "## Accuracy" in text and "### fingerprint zoo, 32 px, dct input:" in text
    assert "strict heads, ranked by raw scores" in text and "ranked by calibrated scores" in text
    assert "Late joiners" in text and "Open set" in text


def test_every_trainer_view_splits_by_the_datasets_own_photo_split(tmp_path):
    """A view links the manifest too: a dataset split by photograph stays split by photograph for every trainer."""
    from PIL import Image

    from attribnet.bench.accuracy.config import AccuracyConfig, Roles
    from attribnet.bench.accuracy.bench_data import prepare
    from shared_backbone.config import DataConfig
    from shared_backbone.data.datasets import load_split

    root = tmp_path / "photos"
    photos = {"astronaut": "train", "chelsea": "val", "coffee": "test", "rocket": "train"}
    for source in ("real", "srvgg_x2", "cugan_se2x_n0", "bicubic_x2", "rrdb_x4plus"):
        (root / source).mkdir(parents=True)
        for number, photo in enumerate(sorted(photos) * 3):
            Image.new("RGB", (16, 16), (number, 0, 0)).save(root / source / f"{number:05d}-{photo}.png")
    (root / "manifest.json").write_text(json.dumps({"group_splits": photos, "real_sources": ["real"]}))
    config = AccuracyConfig(dataset="folder", roles=Roles(nodes=["srvgg_x2", "cugan_se2x_n0"], late=["cugan_se2x_n0"],
                                                          coordinator=["bicubic_x2"], held_out=["rrdb_x4plus"]))
    bench = prepare(config, DataConfig(root=str(root), image_size=16, real_sources=["real"]), tmp_path / "work")
    _, splits = load_split(bench.node_view("srvgg_x2"))
    assert {name: {p.path.name.split("-", 1)[1][:-4] for p in samples} for name, samples in splits.items()} == {
        "train": {"astronaut", "rocket"}, "val": {"chelsea"}, "test": {"coffee"}}


def test_a_profile_keeps_its_seeds_unless_the_command_names_others():
    """configs/bench.yaml says 3 seeds; --profile quick says 1; a --seeds flag beats both; --mode sets the input; --set any key."""
    from attribnet.cli import build_parser
    from attribnet.commands.bench.accuracy import load

    config = Path(__file__).resolve().parent.parent / "configs" / "bench.yaml"
    parse = lambda *flags: build_parser().parse_args(["bench", "accuracy", "--config", str(config), *flags])  # noqa: E731
    assert load(parse()).seeds == [0, 1, 2]
    assert load(parse("--profile", "robust-quick")).seeds == [0]
    assert load(parse("--profile", "quick", "--seeds", "3", "4")).seeds == [3, 4]
    assert load(parse("--profile", "robust-quick")).protocols == ["robust", "oracle"]
    res128 = load(parse("--profile", "res128", "--mode", "residual"))
    assert (res128.data.image_size, res128.upscalers.image_size, res128.data.mode) == (128, 128, "residual")
    assert res128.seeds == [0, 1, 2] and load(parse("--profile", "res128")).data.mode == "dct"
    tuned = load(parse("--profile", "lofo-quick", "--set", "out_of_scope_per_kind=48", "--set", "pretext={generators: 4, detector: true}"))
    assert tuned.out_of_scope_per_kind == 48 and (tuned.pretext.generators, tuned.pretext.detector) == (4, True)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load(parse("--set", "out_of_scope_per_kind"))
    with pytest.raises(ValueError, match="pretext"):
        load(parse("--set", "pretext.nonsense=1"))


def test_the_benchmark_decides_by_the_whole_rule_of_attribnet_predict(report):
    """Its open-set numbers come from the rule with the typicality gate, exactly as `attribnet predict` answers."""
    from attribnet.bench.accuracy import evaluate as ev
    from shared_backbone.model.attributor import OfflineAttributor
    from shared_backbone.model.bundle import load_bundle
    from shared_backbone.model.heads import load_head
    from shared_backbone.model.preprocessing import load_image, to_model_inputs
    from shared_backbone.model.rule import RuleSettings

    _, benchmarks = report
    (founding,) = (benchmarks.parent / "results" / "work" / "seed-0").glob("founding-*")
    bundle = load_bundle(founding / "bundle-clean", None)
    heads = [load_head(path, bundle) for path in sorted(founding.glob("heads-strict-*clean/*/head"))]
    images = [load_image(path, 32) for path in sorted((benchmarks.parent / "results" / "work").glob("zoo/*_a/*.png"))[:12]]
    assert len(heads) == 2 and len(images) == 12
    bench = ev.answers(ev.run_backbone(bundle, images), heads, RuleSettings())
    offline = OfflineAttributor(bundle, heads).attribute(to_model_inputs(images, bundle.input_spec))
    assert all(r.typicality_p_values for r in bench)
    assert [r.attribution for r in bench] == [r.attribution for r in offline]
    assert [r.typicality_p_values for r in bench] == [r.typicality_p_values for r in offline]

"""The shared training loop, the primary module's training run, head training and publishing."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from node.config import NegativesConfig, NodeConfig
from shared_backbone.config import PerturbConfig, TrainConfig
from shared_backbone.data.datasets import load_split
from attribnet.lab.datasets.zoo import zoo_data_config
from shared_backbone.training.fit import BEST_WEIGHTS, MIN_PATIENCE, class_weights, detection_labels, fit
from shared_backbone.model import networks
from shared_backbone.model.preprocessing import InputSpec
from tests.fixtures_backbone import HEAD_NEGATIVES


def _weights_bytes(model) -> list[bytes]:
    return [np.asarray(w).tobytes() for w in model.weights]


def test_class_weights_balance_classes():
    weights = class_weights(np.array([1, 1, 1, 0]))
    assert weights == pytest.approx({0: 2.0, 1: 4 / 6})
    assert class_weights(np.array([0, 0, 2]), 3) == pytest.approx({0: 0.75, 1: 1.0, 2: 1.5})


def test_early_stopping_never_stops_before_min_epochs(tiny_zoo_config, tmp_path):
    """With lr=0 val loss never improves, so only min_epochs and patience (raised to 3) decide the stop."""
    min_epochs, patience = 4, 1
    index, splits = load_split(dataclasses.replace(tiny_zoo_config, image_size=16, max_per_source=12))
    spec = InputSpec(16)
    model = networks.build_baseline("gdaconv", 16, "pixel", "detection")  # no BatchNorm: val loss exactly constant
    train = TrainConfig(epochs=30, batch_size=32, learning_rate=0.0, patience=patience, min_epochs=min_epochs)
    result = fit(
        model, splits["train"], detection_labels(index, splits["train"]),
        splits["val"], detection_labels(index, splits["val"]), spec, train, tmp_path, progress=False,
    )
    assert result.best_epoch == min_epochs
    assert result.epochs_run == min_epochs + max(patience, MIN_PATIENCE)
    assert (tmp_path / "history.csv").read_text().count("\n") == result.epochs_run + 1
    assert any((tmp_path / "tensorboard" / "validation").iterdir())
    assert (tmp_path / "checkpoints" / BEST_WEIGHTS).is_file()


def test_primary_run_folder_records_everything(zoo_primary_run):
    run = zoo_primary_run.run_dir
    for name in ("config.yaml", "seed.txt", "history.csv", "fit.json", "primary.weights.h5", "input.json", "metrics.json"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard" / "train").iterdir())
    assert (run / "seed.txt").read_text().strip() == "1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] >= 3  # min_epochs: never an epoch-1/2 model


def test_trained_detector_is_not_constant(zoo_primary_run):
    """docs/design-notes.md's pitfall: a detector that calls everything fake. It must separate real from fake."""
    test = zoo_primary_run.metrics["test"]
    assert test["score_std"] > 0.05
    assert test["tp"] > 0 and test["tn"] > 0, test
    assert test["roc_auc"] > 0.8


def test_publish_load_bundle_round_trip(zoo_primary_run, zoo_bundle, tiny_zoo_config):
    assert zoo_bundle.signed and zoo_bundle.version == "test-1"
    assert zoo_bundle.manifest["metrics"]["test"]["roc_auc"] == pytest.approx(zoo_primary_run.metrics["test"]["roc_auc"])
    sources = sorted(p.name for p in Path(tiny_zoo_config.root).iterdir() if p.is_dir())
    assert zoo_bundle.manifest["metrics"]["trained_on"]["detector"] == sources  # the signed manifest says what it saw
    assert zoo_bundle.manifest["trainable_parameters"]["head"] == networks.trainable_parameter_count(networks.build_head(32))
    batch = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    reloaded = zoo_bundle.load_primary()
    np.testing.assert_array_equal(np.asarray(reloaded(batch, training=False)), np.asarray(zoo_primary_run.model(batch, training=False)))


def test_publish_refuses_a_folder_that_is_no_run(tmp_path, keypair):
    from coordinator.publish import publish

    with pytest.raises(FileNotFoundError, match="not a finished primary training run"):
        publish(tmp_path, tmp_path / "bundle", keypair[0])


def test_trunk_is_frozen_and_in_inference_mode_during_head_training(zoo_bundle, zoo_reference, tiny_zoo_config, tmp_path):
    from node.head_data import head_data

    data = head_data(NodeConfig(source="tconv_a", data=tiny_zoo_config, reference=str(zoo_reference)), zoo_bundle)
    train_x, val_x = data.positives["train"] + data.negatives["train"], data.positives["val"] + data.negatives["val"]
    train_y = np.r_[np.ones(len(data.positives["train"])), np.zeros(len(data.negatives["train"]))].astype(np.float32)
    val_y = np.r_[np.ones(len(data.positives["val"])), np.zeros(len(data.negatives["val"]))].astype(np.float32)
    trunk = networks.build_trunk(zoo_bundle.load_primary())
    head = networks.build_head(32)
    model = networks.build_attribution_model(trunk, head)
    trunk_before, head_before = _weights_bytes(trunk), _weights_bytes(head)
    batch = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(trunk(batch, training=True)), np.asarray(trunk(batch, training=False)))
    fit(
        model, train_x[:64], train_y[:64], val_x[:32], val_y[:32], zoo_bundle.input_spec,
        TrainConfig(epochs=1, batch_size=32, min_epochs=1), tmp_path, progress=False,
    )
    assert _weights_bytes(trunk) == trunk_before  # incl. BatchNorm moving mean/variance
    assert _weights_bytes(head) != head_before


def test_heads_are_trained_strictly_calibrated_and_bound_to_the_bundle(zoo_bundle, zoo_heads):
    from shared_backbone.model.heads import load_head

    sources = ["bilinear_a", "nnconv_a", "pixshuffle_a", "tconv_a", "tconv_b"]
    assert sorted(zoo_heads) == sources
    for source, head_dir in zoo_heads.items():
        head = load_head(head_dir, zoo_bundle)
        assert head.source == source and head.backbone_digest == zoo_bundle.digest
        assert head.calibration.method == "temperature" and 0 < head.calibration.a <= 50 and head.calibration.b == 0
        access = head.metrics["data_access"]
        # strict: the zoo's other generators sit in the node's folder but are never trained on
        assert access["access"] == "strict" and access["reference_sources"] == ["real"]
        assert sorted(access["ignored_local_sources"]) == [s for s in sources if s != source]
        assert access["reference_digest"] == zoo_bundle.manifest["reference"]["digest"]
        counts = head.metrics["counts"]
        assert len(head.calibration.positive_scores) == counts["calib"]["positives"] > 0
        made = counts["train"]["self_made_negatives"]
        assert made >= HEAD_NEGATIVES.count // 2 and counts["train"]["total"] > counts["train"]["positives"]
        assert {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(head.metrics["test"]["calibrated"])
        assert head.metrics["best_epoch"] >= 3  # min_epochs of the fixture


def _checkerboard_source(zoo: Path, out: Path, count: int) -> Path:
    """A generator with an unmistakable fingerprint: real images plus a faint Nyquist checkerboard.

    The node also keeps the unmarked photos as its public reals: the reference set leaves the
    coordinator's test split out, so these are the test split's negatives (and the hardest ones).
    """
    from PIL import Image

    folder = out / "checker"
    folder.mkdir(parents=True)
    shutil.copytree(zoo / "real", out / "real")
    for path in sorted((zoo / "real").glob("*.png"))[:count]:
        rgb = np.asarray(Image.open(path), dtype=np.int16)
        y, x = np.indices(rgb.shape[:2])
        pattern = np.where((x + y) % 2 == 0, 14, -14)[..., None]
        Image.fromarray(np.clip(rgb + pattern, 0, 255).astype(np.uint8)).save(folder / path.name)
    return out


def test_a_head_learns_a_separable_source_far_above_chance(zoo_bundle, zoo_reference, tiny_zoo, keypair, tmp_path):
    """Own images (a checkerboard fingerprint) vs the reference reals and self-made negatives: chance is 0.5."""
    from node.train_head import train_head

    root = _checkerboard_source(tiny_zoo, tmp_path / "data", 80)
    config = NodeConfig(
        source="checker", data=dataclasses.replace(zoo_data_config(tiny_zoo), root=str(root)), backbone=str(zoo_bundle.path),
        public_key=str(keypair[1]), reference=str(zoo_reference), state_dir=str(tmp_path / "state"),
        train=TrainConfig(epochs=30, batch_size=32, learning_rate=3e-3, patience=5, min_epochs=3, seed=0),
        negatives=NegativesConfig(count=400),
    )
    metrics = train_head(config, zoo_bundle, progress=False).metrics
    assert metrics["test"]["raw"]["roc_auc"] >= 0.95, metrics["test"]
    assert metrics["test"]["calibrated"]["accuracy"] >= 0.85, metrics["test"]


def test_train_head_refuses_bad_configs(tiny_zoo_config, zoo_bundle, keypair, tmp_path):
    from node.train_head import train_head
    from shared_backbone.model.bundle import BundleError
    from shared_backbone.model.signing import generate_keypair

    base = NodeConfig(source="tconv_a", data=tiny_zoo_config, backbone=str(zoo_bundle.path), public_key=str(keypair[1]), state_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no folder for source 'stylegan'"):
        train_head(dataclasses.replace(base, source="stylegan"), zoo_bundle)
    with pytest.raises(ValueError, match="public_key is not set"):
        train_head(dataclasses.replace(base, public_key=""))
    _, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(BundleError, match="signature does not verify"):
        train_head(dataclasses.replace(base, public_key=str(other_public)))
    only_one = tmp_path / "only_one"
    (only_one / "tconv_a").mkdir(parents=True)
    for image in sorted((Path(tiny_zoo_config.root) / "tconv_a").iterdir())[:10]:
        (only_one / "tconv_a" / image.name).write_bytes(image.read_bytes())
    with pytest.raises(ValueError, match="needs positives and negatives"):
        train_head(dataclasses.replace(base, data=dataclasses.replace(tiny_zoo_config, root=str(only_one))), zoo_bundle)


def test_a_reused_compiled_twin_trains_exactly_as_a_fresh_compile(tmp_path):
    """fit_arrays trains a compiled twin per architecture (no second tracing): the second head of an
    architecture must come out bit for bit as the first did from a fresh compile, and land in its own model."""
    from shared_backbone.training import compiled_twins
    from shared_backbone.training.fit import fit_arrays

    rng = np.random.default_rng(0)
    shape = networks.feature_shape(32)
    x, val_x = (rng.normal(size=(n, *shape)).astype("float16") for n in (96, 32))
    y, val_y = ((rng.random(n) < 0.3).astype("float32") for n in (96, 32))
    train = TrainConfig(epochs=3, batch_size=32, learning_rate=3e-3, patience=3, min_epochs=1, seed=4)

    def trained(seed: int, run: str) -> list[np.ndarray]:
        model = networks.build_head(32, seed=seed)
        assert fit_arrays(model, x, y, val_x, val_y, train, tmp_path / run, progress=False).model is model
        return model.get_weights()

    compiled_twins.clear()
    fresh = trained(7, "fresh")
    other = trained(8, "other seed, reused twin")  # the twin now holds another head's trained state
    reused = trained(7, "reused")
    assert all(np.array_equal(a, b) for a, b in zip(fresh, reused))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, other))
    assert len(compiled_twins._TWINS) == 1


def test_a_reused_compiled_twin_trains_on_images_exactly_as_a_fresh_compile(tiny_zoo_config, tmp_path):
    """The same for `fit` on images (detectors, baselines): tf.data input, perturbations, BatchNorm."""
    from shared_backbone.training import compiled_twins

    index, splits = load_split(dataclasses.replace(tiny_zoo_config, image_size=16, max_per_source=12))
    labels = {name: detection_labels(index, splits[name]) for name in ("train", "val")}
    train = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3, min_epochs=1, seed=2)

    def trained(seed: int, run: str) -> list[np.ndarray]:
        model = networks.build_primary(16, seed=seed)
        fit(model, splits["train"], labels["train"], splits["val"], labels["val"], InputSpec(16), train, tmp_path / run,
            perturb=PerturbConfig(kinds=["jpeg"]), progress=False)
        return model.get_weights()

    compiled_twins.clear()
    fresh, other, reused = trained(7, "fresh"), trained(8, "other"), trained(7, "reused")
    assert all(np.array_equal(a, b) for a, b in zip(fresh, reused))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, other))
    assert len(compiled_twins._TWINS) == 1  # the primary module was rebuilt as a twin, not compiled three times

"""The shared training loop, the primary module's training run, head training and publishing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from node.config import NodeConfig
from shared_backbone.config import TrainConfig
from shared_backbone.data.datasets import load_split
from shared_backbone.experiments import training
from shared_backbone.model import networks
from shared_backbone.model.preprocessing import InputSpec


def _weights_bytes(model) -> list[bytes]:
    return [np.asarray(w).tobytes() for w in model.weights]


def test_class_weights_balance_classes():
    weights = training.class_weights(np.array([1, 1, 1, 0]))
    assert weights == pytest.approx({0: 2.0, 1: 4 / 6})
    assert training.class_weights(np.array([0, 0, 2]), 3) == pytest.approx({0: 0.75, 1: 1.0, 2: 1.5})


def test_early_stopping_never_stops_before_min_epochs(tiny_zoo_config, tmp_path):
    """With lr=0 val loss never improves, so only min_epochs and patience (raised to 3) decide the stop."""
    min_epochs, patience = 4, 1
    index, splits = load_split(dataclasses.replace(tiny_zoo_config, image_size=16, max_per_source=12))
    spec = InputSpec(16)
    model = networks.build_baseline("gdaconv", 16, "pixel", "detection")  # no BatchNorm: val loss exactly constant
    train = TrainConfig(epochs=30, batch_size=32, learning_rate=0.0, patience=patience, min_epochs=min_epochs)
    result = training.fit(
        model, splits["train"], training.detection_labels(index, splits["train"]),
        splits["val"], training.detection_labels(index, splits["val"]), spec, train, tmp_path, progress=False,
    )
    assert result.best_epoch == min_epochs
    assert result.epochs_run == min_epochs + max(patience, training.MIN_PATIENCE)
    assert (tmp_path / "history.csv").read_text().count("\n") == result.epochs_run + 1
    assert any((tmp_path / "tensorboard" / "validation").iterdir())
    assert (tmp_path / "checkpoints" / training.BEST_WEIGHTS).is_file()


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
    assert zoo_bundle.manifest["trainable_parameters"]["head"] == networks.trainable_parameter_count(networks.build_head(32))
    batch = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    reloaded = zoo_bundle.load_primary()
    np.testing.assert_array_equal(np.asarray(reloaded(batch, training=False)), np.asarray(zoo_primary_run.model(batch, training=False)))


def test_publish_refuses_a_folder_that_is_no_run(tmp_path, keypair):
    from coordinator.publish import publish

    with pytest.raises(FileNotFoundError, match="not a finished primary training run"):
        publish(tmp_path, tmp_path / "bundle", keypair[0])


def test_trunk_is_frozen_and_in_inference_mode_during_head_training(zoo_bundle, tiny_zoo_config, tmp_path):
    from node.train_head import head_splits

    splits = head_splits(NodeConfig(source="tconv_a", data=tiny_zoo_config))
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    trunk = networks.build_trunk(zoo_bundle.load_primary())
    head = networks.build_head(32)
    model = networks.build_attribution_model(trunk, head)
    trunk_before, head_before = _weights_bytes(trunk), _weights_bytes(head)
    batch = np.random.default_rng(1).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(trunk(batch, training=True)), np.asarray(trunk(batch, training=False)))
    training.fit(
        model, train_x[:64], train_y[:64], val_x[:32], val_y[:32], zoo_bundle.input_spec,
        TrainConfig(epochs=1, batch_size=32, min_epochs=1), tmp_path, progress=False,
    )
    assert _weights_bytes(trunk) == trunk_before  # incl. BatchNorm moving mean/variance
    assert _weights_bytes(head) != head_before


def test_heads_are_trained_calibrated_and_bound_to_the_bundle(zoo_bundle, zoo_heads):
    from shared_backbone.model.heads import load_head

    assert sorted(zoo_heads) == ["bilinear_a", "nnconv_a", "pixshuffle_a", "tconv_a", "tconv_b"]
    for source, head_dir in zoo_heads.items():
        head = load_head(head_dir, zoo_bundle)
        assert head.source == source and head.backbone_digest == zoo_bundle.digest
        assert head.calibration.method == "platt"
        val = head.metrics["val"]
        # Platt scaling minimises val log-loss over (a, b), and (1, 0) is the raw score: never worse.
        assert val["calibrated"]["log_loss"] <= val["raw"]["log_loss"] + 1e-6
        assert {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(head.metrics["test"]["calibrated"])
        assert head.metrics["best_epoch"] >= 3  # min_epochs of the fixture


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

"""The paper's architectures: exact parameter counts, layer names and shapes, baselines per task."""

from __future__ import annotations

import numpy as np
import pytest

from shared_backbone import models

PRIMARY_LAYERS = [
    "dConv_01", "dRelu_01", "dConv_02", "dBNorm_02", "dRelu_02", "dConv_03", "dBNorm_03", "dRelu_03",
    "dConv_04", "dBNorm_04", "dRelu_04", "dConv_05", "dBNorm_05", "dRelu_05", "dConv_06", "dBNorm_06", "dRelu_06",
]
HEAD_LAYERS = ["aConv_01", "aBNorm_01", "aRelu_01", "aConv_02", "aBNorm_02", "aRelu_02", "aGAP", "aDecision"]


def test_parameter_counts_at_128_match_the_paper():
    primary = models.build_primary(128, "pixel")
    assert models.trainable_parameter_count(primary) == 27_053
    assert models.trainable_parameter_count(models.build_head(128)) == 21_217


@pytest.mark.parametrize("mode", models.MODES)
@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_primary_layer_names_and_shapes(mode, size):
    primary = models.build_primary(size, mode)
    names = [layer.name for layer in primary.layers]
    assert names[1 : 1 + len(PRIMARY_LAYERS)] == PRIMARY_LAYERS
    assert names[-2:] == (["dGAP", "dDecision"] if mode == "pixel" else ["dFlatten", "dDecision"])
    assert primary.input.shape[1:] == (size, size, 3 if mode == "pixel" else 1)
    assert primary.get_layer("dRelu_04").output.shape[1:] == (size // 4, size // 4, 16)
    assert primary.get_layer("dRelu_06").output.shape[1:] == (size // 8, size // 8, 32)
    assert primary.output.shape[1:] == (1,)
    trunk = models.build_trunk(primary)
    assert trunk.output.shape[1:] == models.feature_shape(size)
    serving = models.build_serving_model(primary)
    batch = np.zeros((2, size, size, 3 if mode == "pixel" else 1), np.float32)
    fake, features = serving(batch, training=False)
    assert fake.shape == (2, 1) and features.shape == (2, *models.feature_shape(size))


@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_head_layer_names_and_shapes(size):
    head = models.build_head(size)
    assert [layer.name for layer in head.layers][1:] == HEAD_LAYERS
    assert head.input.shape[1:] == models.feature_shape(size)
    assert head.get_layer("aRelu_02").output.shape[1:] == (size // 8, size // 8, 32)
    assert head.output.shape[1:] == (1,)


def test_batchnorm_momentum_defaults_to_the_measured_safe_value():
    for model in (models.build_primary(32), models.build_head(32)):
        momenta = {layer.momentum for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"}
        assert momenta == {models.DEFAULT_BN_MOMENTUM} and models.DEFAULT_BN_MOMENTUM < 0.99


@pytest.mark.parametrize("name", models.BASELINES)
@pytest.mark.parametrize("task", models.TASKS)
@pytest.mark.parametrize("mode", models.MODES)
def test_baselines_build_for_every_task(name, task, mode):
    classes = 6 if task == "multiclass" else 1
    model = models.build_baseline(name, 32, mode, task, classes)
    batch = np.random.default_rng(0).normal(size=(3, 32, 32, 3 if mode == "pixel" else 1)).astype(np.float32)
    out = np.asarray(model(batch, training=False))
    assert out.shape == (3, classes)
    if task == "multiclass":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    else:
        assert ((out > 0) & (out < 1)).all()


def test_invalid_sizes_modes_and_tasks_are_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        models.build_primary(40)
    with pytest.raises(ValueError, match="unknown input mode"):
        models.build_primary(32, "rgb")
    with pytest.raises(ValueError, match="unknown task"):
        models.build_baseline("gdaconv", 32, "pixel", "ranking")
    with pytest.raises(ValueError, match="unknown baseline"):
        models.build_baseline("resnet", 32, "pixel", "detection")
    with pytest.raises(ValueError, match="at least 2 classes"):
        models.build_baseline("gdaconv", 32, "pixel", "multiclass", 1)

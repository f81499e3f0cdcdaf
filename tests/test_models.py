"""The paper's architectures: exact parameter counts, layer names and shapes, baselines per task."""

from __future__ import annotations

import numpy as np
import pytest

from shared_backbone.model import networks
from shared_backbone.model.preprocessing import MODES, channels_for

PRIMARY_LAYERS = [
    "dConv_01", "dRelu_01", "dConv_02", "dBNorm_02", "dRelu_02", "dConv_03", "dBNorm_03", "dRelu_03",
    "dConv_04", "dBNorm_04", "dRelu_04", "dConv_05", "dBNorm_05", "dRelu_05", "dConv_06", "dBNorm_06", "dRelu_06",
]
HEAD_LAYERS = ["aConv_01", "aBNorm_01", "aRelu_01", "aConv_02", "aBNorm_02", "aRelu_02", "aGAP", "aDecision"]


def test_parameter_counts_at_128_match_the_paper():
    primary = networks.build_primary(128, "pixel")
    assert networks.trainable_parameter_count(primary) == 27_053
    assert networks.trainable_parameter_count(networks.build_head(128)) == 21_217


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_primary_layer_names_and_shapes(mode, size):
    primary = networks.build_primary(size, mode)
    names = [layer.name for layer in primary.layers]
    assert names[1 : 1 + len(PRIMARY_LAYERS)] == PRIMARY_LAYERS
    assert names[-2:] == (["dGAP", "dDecision"] if mode != "dct" else ["dFlatten", "dDecision"])
    assert primary.input.shape[1:] == (size, size, channels_for(mode))
    assert primary.get_layer("dRelu_04").output.shape[1:] == (size // 4, size // 4, 16)
    assert primary.get_layer("dRelu_06").output.shape[1:] == (size // 8, size // 8, 32)
    assert primary.output.shape[1:] == (1,)
    trunk = networks.build_trunk(primary)
    assert trunk.output.shape[1:] == networks.feature_shape(size)
    serving = networks.build_serving_model(primary)
    batch = np.zeros((2, size, size, channels_for(mode)), np.float32)
    fake, features = serving(batch, training=False)
    assert fake.shape == (2, 1) and features.shape == (2, *networks.feature_shape(size))


@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_head_layer_names_and_shapes(size):
    head = networks.build_head(size)
    assert [layer.name for layer in head.layers][1:] == HEAD_LAYERS
    assert head.input.shape[1:] == networks.feature_shape(size)
    assert head.get_layer("aRelu_02").output.shape[1:] == (size // 8, size // 8, 32)
    assert head.output.shape[1:] == (1,)


def test_batchnorm_momentum_defaults_to_the_measured_safe_value():
    for model in (networks.build_primary(32), networks.build_head(32)):
        momenta = {layer.momentum for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"}
        assert momenta == {networks.DEFAULT_BN_MOMENTUM} and networks.DEFAULT_BN_MOMENTUM < 0.99


@pytest.mark.parametrize("name", networks.BASELINES)
@pytest.mark.parametrize("task", networks.TASKS)
@pytest.mark.parametrize("mode", MODES)
def test_baselines_build_for_every_task(name, task, mode):
    classes = 6 if task == "multiclass" else 1
    model = networks.build_baseline(name, 32, mode, task, classes)
    batch = np.random.default_rng(0).normal(size=(3, 32, 32, channels_for(mode))).astype(np.float32)
    out = np.asarray(model(batch, training=False))
    assert out.shape == (3, classes)
    if task == "multiclass":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    else:
        assert ((out > 0) & (out < 1)).all()


def test_invalid_sizes_modes_and_tasks_are_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        networks.build_primary(40)
    with pytest.raises(ValueError, match="unknown input mode"):
        networks.build_primary(32, "rgb")
    with pytest.raises(ValueError, match="unknown task"):
        networks.build_baseline("gdaconv", 32, "pixel", "ranking")
    with pytest.raises(ValueError, match="unknown baseline"):
        networks.build_baseline("resnet", 32, "pixel", "detection")
    with pytest.raises(ValueError, match="at least 2 classes"):
        networks.build_baseline("gdaconv", 32, "pixel", "multiclass", 1)

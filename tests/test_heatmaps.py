"""CAM and Grad-CAM: identities they must satisfy, and the overlays drawn from them (tiny 32-px models)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import scipy.special
from PIL import Image

from shared_backbone.model import heads, heatmaps, networks

SIZE = 32


def scaled_decision(model: keras.Model, name: str, seed: int) -> keras.Model:
    """The 0.02 init gives near-zero activations; He-scaled kernels and a biased decision make the identities non-trivial."""
    rng = np.random.default_rng(seed)
    for conv in (layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)):
        fan_in = int(np.prod(conv.kernel.shape[:3]))
        conv.kernel.assign(rng.normal(0, np.sqrt(2.0 / fan_in), conv.kernel.shape).astype(np.float32))
    layer = model.get_layer(name)
    layer.kernel.assign(rng.normal(0, 1.0, layer.kernel.shape).astype(np.float32))
    layer.bias.assign(np.array([0.3], dtype=np.float32))
    return model


def random_inputs(shape, seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, *shape)).astype(np.float32)


def test_cam_mean_plus_bias_is_the_logit():
    """GAP + Dense: the decision's logit is the spatial mean of the unnormalised CAM plus the bias."""
    primary = scaled_decision(networks.build_primary(SIZE, "pixel"), "dDecision", 0)
    inputs = random_inputs((SIZE, SIZE, 3), 1)
    maps, method = heatmaps.raw_heatmaps(primary, inputs)
    assert method == heatmaps.CAM and maps.shape == (3, SIZE // 8, SIZE // 8)
    probabilities = np.asarray(primary(inputs, training=False), dtype=np.float64)[:, 0]
    assert np.abs(maps.mean(axis=(1, 2))).max() > 0.1  # the identity below is not 0 == 0
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + 0.3, scipy.special.logit(probabilities), rtol=1e-4, atol=1e-4)


def test_head_cam_uses_the_head_decision():
    head = scaled_decision(networks.build_head(SIZE), "aDecision", 2)
    features = np.abs(random_inputs(networks.feature_shape(SIZE), 3))
    maps, method = heatmaps.raw_heatmaps(head, features)
    assert method == heatmaps.CAM
    logits = scipy.special.logit(np.asarray(head(features, training=False), dtype=np.float64)[:, 0])
    assert np.abs(maps.mean(axis=(1, 2))).max() > 0.1
    np.testing.assert_allclose(maps.mean(axis=(1, 2)) + 0.3, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["primary", "head"])
def test_grad_cam_on_flatten_models_uses_the_mean_kernel(kind):
    """Flatten + Dense: d logit / d A is the Dense kernel reshaped, so alpha_k is its spatial mean."""
    if kind == "primary":
        model = scaled_decision(networks.build_primary(SIZE, "dct"), "dDecision", 4)
        inputs, conv, decision = random_inputs((SIZE, SIZE, 1), 5), "dRelu_06", "dDecision"
    else:
        model = scaled_decision(heads.build_head_model(SIZE, "flatten"), "aDecision", 6)
        inputs, conv, decision = np.abs(random_inputs(networks.feature_shape(SIZE), 7)), "aRelu_02", "aDecision"
    maps, method = heatmaps.raw_heatmaps(model, inputs)
    assert method == heatmaps.GRAD_CAM
    activations = np.asarray(keras.Model(model.input, model.get_layer(conv).output)(inputs), dtype=np.float64)
    kernel = np.asarray(model.get_layer(decision).kernel.numpy(), dtype=np.float64).reshape(activations.shape[1:])
    alpha = kernel.mean(axis=(0, 1))
    expected = np.maximum(np.einsum("nhwc,c->nhw", activations, alpha), 0.0)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    assert maps.max() > 0


def test_normalised_maps_span_zero_to_one_and_differ():
    primary = scaled_decision(networks.build_primary(SIZE, "pixel"), "dDecision", 8)
    maps, _ = heatmaps.compute_heatmaps(primary, random_inputs((SIZE, SIZE, 3), 9))
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for heat in maps:
        assert heat.min() == pytest.approx(0.0) and heat.max() == pytest.approx(1.0)
    assert not np.allclose(maps[0], maps[1])


def test_model_without_decision_is_refused():
    trunk = networks.build_trunk(networks.build_primary(SIZE, "pixel"))
    with pytest.raises(ValueError, match="neither dDecision nor aDecision"):
        heatmaps.raw_heatmaps(trunk, random_inputs((SIZE, SIZE, 3), 10))


def test_overlay_colours_follow_the_map():
    background = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[:, :2] = 1.0  # left half hot
    assert np.array_equal(heatmaps.overlay(background, heat, alpha=0.0), background)
    blended = heatmaps.overlay(background, heat, alpha=0.6).astype(int)
    assert blended.shape == (SIZE, SIZE, 3) and blended.dtype == np.int64
    left, right = blended[:, :4].mean(axis=(0, 1)), blended[:, -4:].mean(axis=(0, 1))
    assert left[0] > left[2] + 40  # hot = red end of the colormap
    assert right[2] > right[0] + 40  # cold = blue end


def test_render_and_save(tmp_path):
    rgb = np.random.default_rng(11).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    heat = np.random.default_rng(12).random((4, 4)).astype(np.float32)
    factor = -(-heatmaps.DISPLAY_SIDE // SIZE)  # enlarged to be looked at, by a whole factor
    assert heatmaps.render(rgb, heat, "pixel").shape == (factor * SIZE, factor * SIZE, 3)
    assert heatmaps.render(rgb, heat, "pixel", min_side=SIZE).shape == (SIZE, SIZE, 3)
    dct = heatmaps.render(rgb, heat, "dct")
    big = rgb.repeat(factor, axis=0).repeat(factor, axis=1)  # nearest neighbour: no smoothing
    assert dct.shape == (factor * SIZE, 2 * factor * SIZE, 3) and np.array_equal(dct[:, : factor * SIZE], big)
    cells = heatmaps.overlay(rgb, heat)  # each of the 4x4 map's cells is one flat block of colour
    block = SIZE // 4
    overlay_only = heatmaps.overlay(np.zeros_like(rgb), heat)
    assert len(np.unique(overlay_only[:block, :block].reshape(-1, 3), axis=0)) == 1 and cells.shape == rgb.shape
    path = heatmaps.save_heatmap(tmp_path / "deep" / "x_heatmap.png", rgb, heat, "dct")
    with Image.open(path) as saved:
        assert saved.format == "PNG" and np.array_equal(np.asarray(saved), dct)

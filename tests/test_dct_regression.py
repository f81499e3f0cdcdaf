"""Frank et al.'s DCT regression: the optimiser is right, features are the shared log-DCT, and it
attributes the zoo far above chance."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shared_backbone.data.datasets import load_split
from shared_backbone.data.perturbations import jpeg
from attribnet.lab.datasets.zoo import zoo_data_config
from attribnet.lab.baselines import dct_regression
from attribnet.lab.baselines.dct_regression import DctLinearModel, dct_features, fit, iter_dct_features, predict_proba
from shared_backbone.model.preprocessing import load_image, log_dct_spectrum


def blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (k, d))
    labels = rng.integers(0, k, n)
    return (centres[labels] + rng.normal(0, 1, (n, d))) * 3 + 10, labels  # offset/scale: fit standardises


def test_gradient_matches_finite_differences():
    x, y = blobs(30, 5, 3, 0)
    onehot = np.eye(3)[y]
    weights = np.random.default_rng(1).uniform(0.5, 2, 30)
    params = np.random.default_rng(2).normal(0, 0.1, 5 * 3 + 3)
    _, grad = dct_regression._loss_and_grad(params, x, onehot, weights, 0.1)
    step = 1e-6
    numeric = np.array([
        (dct_regression._loss_and_grad(params + step * e, x, onehot, weights, 0.1)[0]
         - dct_regression._loss_and_grad(params - step * e, x, onehot, weights, 0.1)[0]) / (2 * step)
        for e in np.eye(len(params))
    ])
    assert np.allclose(grad, numeric, atol=1e-6)


def test_fits_separable_data_and_l2_shrinks_weights():
    x, y = blobs(600, 20, 4, 3)
    model = fit(x[:400], y[:400], 4, l2=1e-3)
    probabilities = predict_proba(model, x[400:])
    assert probabilities.shape == (200, 4)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities.argmax(axis=1) == y[400:]).mean() > 0.9
    strong = fit(x[:400], y[:400], 4, l2=10.0)
    assert np.linalg.norm(strong.weights) < 0.2 * np.linalg.norm(model.weights)
    # Two classes = detection.
    binary = fit(x[:400], (y[:400] == 0).astype(int), 2, l2=1e-2)
    assert (predict_proba(binary, x[400:]).argmax(axis=1) == (y[400:] == 0)).mean() > 0.9


def test_sample_weights_shift_the_decision():
    x, y = blobs(400, 4, 2, 5)
    x = x + np.random.default_rng(0).normal(0, 6, x.shape)  # overlapping classes
    plain = predict_proba(fit(x, y, 2, 1e-2), x).argmax(axis=1).mean()
    weights = np.where(y == 1, 10.0, 1.0)
    favoured = predict_proba(fit(x, y, 2, 1e-2, sample_weights=weights), x).argmax(axis=1).mean()
    assert favoured > plain + 0.1  # class 1 predicted much more often when it weighs more
    with pytest.raises(ValueError, match="sample_weights"):
        fit(x, y, 2, sample_weights=-weights)
    with pytest.raises(ValueError, match="labels"):
        fit(x, y + 5, 2)


def test_features_are_the_shared_log_dct_and_skip_unreadable_files(tiny_zoo, tmp_path, caplog):
    paths = sorted((tiny_zoo / "real").glob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    features, positions = dct_features([paths[0], broken, paths[1], paths[2]], 32)
    assert features.shape == (3, 32 * 32) and positions.tolist() == [0, 2, 3]
    assert np.allclose(features[0], log_dct_spectrum(load_image(paths[0], 32)).ravel(), atol=1e-5)
    assert str(broken) in caplog.text
    perturbed = list(iter_dct_features(paths[:1], 32, perturb=lambda rgb, rng: jpeg(rgb, 20)))
    assert np.allclose(perturbed[0][1], log_dct_spectrum(jpeg(load_image(paths[0], 32), 20)).ravel(), atol=1e-5)
    with pytest.raises(ValueError, match="no readable"):
        dct_features([broken], 32)


def test_attributes_the_zoo_far_above_chance_and_round_trips(tiny_zoo, tmp_path):
    index, splits = load_split(zoo_data_config(tiny_zoo))
    classes = sorted({index.class_of(s) for s in index.sources})
    label = {c: i for i, c in enumerate(classes)}
    train = splits["train"] + splits["val"]
    x, kept = dct_features([s.path for s in train], 32)
    y = np.array([label[index.class_of(train[i].source)] for i in kept])
    model = fit(x, y, len(classes), l2=1e-2, max_iterations=150)
    xt, kept_t = dct_features([s.path for s in splits["test"]], 32)
    yt = np.array([label[index.class_of(splits["test"][i].source)] for i in kept_t])
    accuracy = (predict_proba(model, xt).argmax(axis=1) == yt).mean()
    assert accuracy > 0.7  # 6 classes: chance is 0.17; measured 0.97
    model.save(tmp_path / "dct.npz")
    loaded = DctLinearModel.load(tmp_path / "dct.npz")
    assert np.allclose(predict_proba(loaded, xt), predict_proba(model, xt))


def test_image_order_does_not_matter_for_features(tiny_zoo):
    path = sorted((tiny_zoo / "tconv_a").glob("*.png"))[0]
    direct = log_dct_spectrum(np.asarray(Image.open(path).convert("RGB"))).ravel()
    assert np.allclose(dct_features([path], 32)[0][0], direct, atol=1e-5)

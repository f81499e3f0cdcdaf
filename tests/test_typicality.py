"""Typicality: a source's one-class density on trunk statistics, its conformal reference, its storage,
and what `attribnet predict --json` shows (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.network_support import make_bundle, make_head, png_bytes


def _auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half."""
    greater = (positive[:, None] > negative[None, :]).mean()
    return float(greater + 0.5 * (positive[:, None] == negative[None, :]).mean())


def _source_features(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Trunk-like features of one 'source': ReLU of a field with fixed channel means and a shared texture."""
    channel_means = np.linspace(-0.5, 1.5, 16) + shift
    field = rng.normal(size=(n, 8, 8, 16)) * 0.6 + channel_means + rng.normal(size=(n, 1, 1, 1)) * 0.2
    return np.maximum(field, 0.0).astype(np.float16)


def test_typicality_p_values_cover_held_out_own_images_at_one_minus_alpha():
    from shared_backbone.model.calibration import Calibration
    from shared_backbone.model.typicality import fit_typicality

    rng = np.random.default_rng(0)
    own = _source_features(rng, 300 + 400 + 3000)
    model = fit_typicality(own[:300])
    calibration = Calibration().with_typicality(model.score(own[300:700]))
    held_out = calibration.typicality_p_values(model.score(own[700:]))
    for alpha in (0.01, 0.05, 0.2):
        rejected = float((held_out <= alpha).mean())
        assert alpha - 0.025 <= rejected <= alpha + 0.025, (alpha, rejected)
    other = calibration.typicality_p_values(model.score(_source_features(rng, 500, shift=1.0)))
    assert (other <= 0.05).mean() > 0.9  # another source's statistics are atypical


def test_a_reference_taken_on_the_fitting_images_is_optimistic():
    """Why the node takes its reference on images the fit did not use: in-sample distances are smaller."""
    from shared_backbone.model.calibration import Calibration
    from shared_backbone.model.typicality import fit_typicality

    rng = np.random.default_rng(1)
    own = _source_features(rng, 60 + 2000)
    model = fit_typicality(own[:60])
    in_sample = Calibration().with_typicality(model.score(own[:60]))
    rejected = (in_sample.typicality_p_values(model.score(own[60:])) <= 0.05).mean()
    assert rejected > 0.15  # far above the 5% a held-out reference guarantees


def test_degenerate_or_bad_references():
    from shared_backbone.model.calibration import MIN_REFERENCE, Calibration, CalibrationError

    assert Calibration(typicality_scores=(-1.0,) * 50).typicality_p_values(np.array([-5.0])) is None  # all equal
    few = tuple(-float(i) for i in range(MIN_REFERENCE - 1, 0, -1))
    assert Calibration(typicality_scores=few).typicality_p_values(-3.0) is None
    enough = tuple(-float(i) for i in range(MIN_REFERENCE, 0, -1))
    assert Calibration(typicality_scores=enough).typicality_p_values(-100.0) == pytest.approx(1 / (len(enough) + 1))
    for bad, fragment in [((float("nan"),) * 12, "finite"), ((-1.0, -2.0), "sorted"), ((float("-inf"), 0.0), "finite"),
                          ((0.0,) * 4097, "at most")]:
        with pytest.raises(CalibrationError, match=fragment):
            Calibration(typicality_scores=bad)
    data = Calibration(typicality_scores=enough).to_dict()
    assert Calibration.from_dict(data).typicality_scores == enough
    with pytest.raises(CalibrationError, match="finite"):
        Calibration.from_dict({**data, "typicality_scores": [1e12]})


def _gradients(count: int, size: int = 32) -> list[np.ndarray]:
    ramp = np.linspace(0, 255, size)
    images = []
    for i in range(count):
        a, b = np.cos(i), np.sin(i)
        value = np.abs(np.add.outer(ramp * a, ramp * b)) % 256
        colour = np.stack([value, 255 - value, np.roll(value, i, axis=0)], axis=-1)
        images.append(colour.astype(np.uint8))
    return images


def test_on_a_trained_trunk_own_images_are_typical_noise_and_gradients_are_not(zoo_bundle, tiny_zoo):
    """Per zoo generator: fit on 40 of its images, reference on 20 others, judge its last 20 against noise and gradients."""
    from shared_backbone.model import networks
    from shared_backbone.model.calibration import Calibration
    from shared_backbone.model.features import as_head_features
    from shared_backbone.model.preprocessing import load_image, to_model_inputs
    from shared_backbone.model.typicality import fit_typicality

    trunk = networks.build_trunk(zoo_bundle.load_primary())
    spec = zoo_bundle.input_spec

    def features(images: list[np.ndarray]) -> np.ndarray:
        return as_head_features(np.asarray(trunk(to_model_inputs(images, spec), training=False)))

    rng = np.random.default_rng(3)
    scope = features([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(20)] + _gradients(20))
    generators = [p for p in sorted(tiny_zoo.iterdir()) if p.is_dir() and p.name != "real"]
    aurocs, held_out_p = [], []
    for folder in generators:
        own = features([load_image(path, spec.image_size) for path in sorted(folder.glob("*.png"))[:80]])
        model = fit_typicality(own[:40])
        calibration = Calibration().with_typicality(model.score(own[40:60]))
        aurocs.append(_auroc(model.score(own[60:]), model.score(scope)))
        held_out_p.append(calibration.typicality_p_values(model.score(own[60:])))
    assert min(aurocs) > 0.8 and np.mean(aurocs) > 0.9, aurocs
    coverage = float((np.concatenate(held_out_p) > 0.2).mean())  # conformal: >= 0.8 in expectation (21 ranks: 0.81)
    assert 0.65 <= coverage <= 0.97, coverage


def test_head_stores_and_checks_its_typicality_model(tmp_path, keypair):
    from shared_backbone.model.heads import HEAD_TYPICALITY, HeadError, load_head

    bundle = make_bundle(tmp_path / "bundle", *keypair)
    saved = make_head(tmp_path / "node", bundle, "alpha", seed=5, typicality=True)
    loaded = load_head(tmp_path / "node" / "head", bundle)
    assert loaded.typicality is not None and loaded.calibration.has_typicality
    features = np.random.default_rng(0).random((4, 8, 8, 16)).astype(np.float16)
    assert np.array_equal(loaded.typicality_scores(features), saved.typicality_scores(features))
    plain = make_head(tmp_path / "plain", bundle, "beta", seed=6)
    assert plain.typicality_scores(features) is None and load_head(tmp_path / "plain" / "head", bundle).typicality is None
    path = tmp_path / "node" / "head" / HEAD_TYPICALITY
    path.write_bytes(path.read_bytes()[:-8] + b"tampered")
    with pytest.raises(HeadError, match="sha256"):
        load_head(tmp_path / "node" / "head", bundle)


def test_predict_json_shows_typicality_and_answers_small_images_out_of_scope(tmp_path, keypair, capsys):
    from attribnet.cli import main
    from shared_backbone.model.heads import load_head
    from shared_backbone.model.rule import DEFAULT_TYPICALITY_ALPHA, REASONS

    bundle = make_bundle(tmp_path / "bundle", *keypair)
    make_head(tmp_path / "alpha", bundle, "alpha", seed=7, typicality=True)
    make_head(tmp_path / "beta", bundle, "beta", seed=8)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(9)
    (images / "a_random.png").write_bytes(png_bytes(rng))
    Image.fromarray(_gradients(1)[0]).save(images / "b_gradient.png")
    (images / "c_tiny.png").write_bytes(png_bytes(rng, 16))
    code = main(["predict", str(images), "--backbone", str(bundle.path), "--head", str(tmp_path / "alpha" / "head"),
                 "--head", str(tmp_path / "beta" / "head"), "--json", "--fake-threshold", "0"])
    records = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert code == 0
    tiny = records["c_tiny.png"]
    assert tiny["attribution"] == "unknown" and "too small" in tiny["out_of_scope"] and "16x16" in tiny["out_of_scope"]
    assert tiny["reason"] == "out_of_scope"
    alpha = load_head(tmp_path / "alpha" / "head", bundle)
    for name in ("a_random.png", "b_gradient.png"):
        record = records[name]
        assert "out_of_scope" not in record and set(record["heads"]) == {"alpha", "beta"}
        assert {"calibrated", "typicality", "typicality_p_value"} <= set(record["heads"]["alpha"])
        assert "typicality" not in record["heads"]["beta"]  # no typicality model: nothing to show
        assert record["typicality_alpha"] == DEFAULT_TYPICALITY_ALPHA
    # alpha's model was fitted on random-pixel images: another one is typical, a gradient is not
    assert records["a_random.png"]["heads"]["alpha"]["typicality_p_value"] > 0.05
    gradient = records["b_gradient.png"]["heads"]["alpha"]
    for record in records.values():  # the reason is the exit that gave the answer: a named source only by best_source
        assert record["reason"] in REASONS and (record["reason"] == "best_source") == (record["attribution"] in ("alpha", "beta"))
    assert gradient["typicality_p_value"] == pytest.approx(1 / (len(alpha.calibration.typicality_scores) + 1))


def test_a_trained_node_head_carries_its_typicality_model_and_reference(zoo_heads, zoo_bundle):
    """`node.train_head`: fitted on own train images, reference = own val + calib images (which the fit did not use)."""
    from shared_backbone.model.heads import load_head

    for source, directory in zoo_heads.items():
        head = load_head(directory, zoo_bundle)
        counts = head.metrics["counts"]
        assert head.typicality is not None and head.typicality.fitted_on == counts["train"]["positives"]
        assert len(head.calibration.typicality_scores) == counts["val"]["positives"] + counts["calib"]["positives"]
        assert head.calibration.has_typicality
        assert head.metrics["typicality"]["calib_auroc_own_vs_negatives"] > 0.6, (source, head.metrics["typicality"])

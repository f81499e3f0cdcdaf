"""The independent second zoo: layout and manifest the zoo readers accept, determinism, resumption,
faithful-but-not-identical generators, learnable fingerprints, and that it shares no code with zoo.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from attribnet.cli import main
from attribnet.lab.baselines.dct_regression import fit, predict_proba
from attribnet.lab.datasets.independent_generators import make_generator, style_inputs, upsample
from attribnet.lab.datasets.independent_scenes import generator_input
from attribnet.lab.datasets.zoo import read_manifest, zoo_data_config
from attribnet.lab.datasets.zoo_independent import (
    FAMILIES,
    IndependentZooSettings,
    image_rng,
    render_fakes,
    render_reals,
    write_independent_zoo,
)
from shared_backbone.data.datasets import scan_dataset
from shared_backbone.model.preprocessing import log_dct_spectrum
from tests.test_layering import REPO, imported_modules

SOURCES = ("tconv_a", "tconv_b", "nnconv_a", "bilinear_a", "pixshuffle_a", "modconv_a")


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def independent_zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("independent") / "zoo"
    write_independent_zoo(root, image_size=32, per_source=5, seed=3, sources=SOURCES)
    return root


def test_layout_and_manifest_are_read_by_the_zoo_readers(independent_zoo):
    manifest = read_manifest(independent_zoo)
    assert manifest["implementation"] == "independent" and manifest["complete"] is True
    assert (manifest["format"], manifest["image_size"], manifest["per_source"], manifest["seed"]) == (1, 32, 5, 3)
    assert manifest["real_sources"] == ["real"] and set(manifest["sources"]) == {"real", *SOURCES}
    for name, info in manifest["sources"].items():
        assert info["architecture"] == name.split("_")[0] and info["kind"] == ("real" if name == "real" else "fake")
        files = sorted((independent_zoo / name).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
        with Image.open(files[0]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    fakes = manifest["sources"]
    assert fakes["tconv_a"]["parameters"]["weights_sha256"] != fakes["tconv_b"]["parameters"]["weights_sha256"]
    assert "ModulatedConv2D" in fakes["modconv_a"]["parameters"]["keras_layers"]
    config = zoo_data_config(independent_zoo)
    assert config.image_size == 32 and config.real_sources == ["real"]
    index = scan_dataset(config)
    assert sorted(index.sources) == sorted(["real", *SOURCES])


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kwargs = {"image_size": 16, "per_source": 3, "sources": ("tconv_a", "modconv_a")}
    write_independent_zoo(tmp_path / "a", seed=5, **kwargs)
    write_independent_zoo(tmp_path / "b", seed=5, **kwargs)
    write_independent_zoo(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b
    images = [k for k in a if k.endswith(".png")]
    assert len(images) == 9 and all(a[k] != c[k] for k in images)


def test_an_interrupted_build_resumes_to_the_same_bytes_and_other_folders_are_refused(tmp_path):
    kwargs = {"image_size": 16, "per_source": 2, "seed": 1, "sources": ("pixshuffle_a",)}
    write_independent_zoo(tmp_path / "zoo", **kwargs)
    before = digests(tmp_path / "zoo")
    (tmp_path / "zoo" / "pixshuffle_a" / "00001.png").unlink()
    manifest = json.loads((tmp_path / "zoo" / "manifest.json").read_text())
    (tmp_path / "zoo" / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ValueError, match="incomplete"):
        zoo_data_config(tmp_path / "zoo")
    write_independent_zoo(tmp_path / "zoo", **kwargs)
    assert digests(tmp_path / "zoo") == before
    with pytest.raises(FileExistsError, match="not empty"):
        write_independent_zoo(tmp_path / "zoo", **{**kwargs, "seed": 2})


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """In dB for images in [-1, 1]."""
    return float(10 * np.log10(4 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_close_to_bilinear_upsampling_but_not_it(family):
    settings = IndependentZooSettings(image_size=32)
    rngs = [image_rng(0, "psnr", i) for i in range(8)]
    lows = np.stack([generator_input(rng, 32, settings.scenes) for rng in rngs]) * 2 - 1
    drawn = [style_inputs(rng, 16) for rng in rngs]
    fakes = upsample(make_generator(f"{family}_a", 0, settings.strength), lows, np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn]))
    bilinear = tf.image.resize(lows, (32, 32), "bilinear").numpy()
    # Measured: 30-33 dB for every family at 32 and 64 px; bicubic vs bilinear is 33-35 dB.
    assert 26 < psnr(fakes, bilinear) < 40
    zero = upsample(make_generator(f"{family}_a", 0, 0.0), lows, np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn]))
    assert psnr(zero, bilinear) > psnr(fakes, bilinear) + 1  # the seeded deviation is what makes the fingerprint


def dct_accuracy(first: np.ndarray, second: np.ndarray, train: int) -> float:
    """Held-out accuracy of a logistic regression on log-DCT spectra telling `first` from `second`."""
    features = [np.stack([log_dct_spectrum(image).ravel() for image in group]) for group in (first, second)]
    x_train = np.concatenate([f[:train] for f in features])
    x_test = np.concatenate([f[train:] for f in features])
    y_train = np.repeat([0, 1], train)
    y_test = np.repeat([0, 1], [len(f) - train for f in features])
    model = fit(x_train, y_train, 2, l2=1e-1)
    return float(np.mean(predict_proba(model, x_test).argmax(axis=1) == y_test))


def test_a_linear_dct_classifier_tells_two_families_apart_and_reals_from_fakes():
    """At the benchmark strength (measured at 32 px: 0.81 between the families, 1.0 real vs fake)."""
    settings = IndependentZooSettings(image_size=32, seed=2)
    tconv = render_fakes(settings, make_generator("tconv_a", 2, settings.strength), range(140))
    pixshuffle = render_fakes(settings, make_generator("pixshuffle_a", 2, settings.strength), range(140))
    reals = render_reals(settings, range(140))
    assert dct_accuracy(tconv, pixshuffle, train=100) >= 0.7  # chance 0.5; 80 test images
    assert dct_accuracy(reals, np.concatenate([tconv[:70], pixshuffle[70:]]), train=100) >= 0.8


def test_the_second_zoo_shares_no_code_with_the_first():
    """The point of a second implementation: none of its modules imports zoo.py or the node's negatives."""
    forbidden = ("attribnet.lab.datasets.zoo", "shared_backbone.data.negatives")
    for name in ("zoo_independent", "independent_generators", "independent_scenes"):
        path = REPO / "attribnet" / "lab" / "datasets" / f"{name}.py"
        imports = imported_modules(path.read_text(), f"attribnet.lab.datasets.{name}")
        assert not [m for m in imports if m in forbidden or m.startswith(tuple(f"{f}." for f in forbidden))], name


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_the_independent_zoo_and_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "zoo"
    code, stdout, _ = run(capsys, "data", "zoo", "--implementation", "independent", "--out", str(out), "--image-size", "16",
                          "--per-source", "2", "--sources", "nnconv_a,bilinear_b", "--seed", "4", "--json")
    assert code == 0
    manifest = json.loads(stdout)
    assert manifest["implementation"] == "independent" and set(manifest["sources"]) == {"real", "nnconv_a", "bilinear_b"}
    assert len(list((out / "bilinear_b").glob("*.png"))) == 2
    for argv, message in [
        (("--sources", "gan_a"), "FAMILY_INSTANCE"),
        (("--image-size", "15"), "even number"),
        (("--seed", "9"), "not empty"),
    ]:
        code, _, stderr = run(capsys, "data", "zoo", "--implementation", "independent", "--out", str(out), "--per-source", "1",
                              "--image-size", "16", *argv)
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1

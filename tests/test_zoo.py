"""The fingerprint zoo: layout, manifest, determinism, and that its sources really differ."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attribnet.lab.datasets import zoo as zoo_module
from shared_backbone.data.datasets import scan_dataset
from attribnet.lab.datasets.zoo import (
    ARCHITECTURES,
    DEFAULT_SOURCES,
    REAL_SOURCE,
    ZooConfig,
    ZooSettings,
    make_generator,
    read_manifest,
    settings_from_config,
    write_zoo,
    zoo_data_config,
)
from shared_backbone.model.preprocessing import log_dct_spectrum
from tests.fixtures_data import TINY_ZOO_PER_SOURCE

SMALL = ZooSettings(image_size=16, per_source=6, seed=11)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_manifest(tiny_zoo):
    manifest = read_manifest(tiny_zoo)
    assert manifest["image_size"] == 32 and manifest["per_source"] == TINY_ZOO_PER_SOURCE and manifest["seed"] == 7
    assert manifest["real_sources"] == [REAL_SOURCE]
    sources = manifest["sources"]
    assert set(sources) == {REAL_SOURCE, *DEFAULT_SOURCES}
    fakes = {name: info for name, info in sources.items() if info["kind"] == "fake"}
    assert sources[REAL_SOURCE]["kind"] == "real" and len(fakes) >= 5
    architectures = {info["architecture"] for info in fakes.values()}
    assert len(architectures) >= 4 and architectures <= set(ARCHITECTURES)
    for name, info in fakes.items():
        assert name.split("_", 1)[0] == info["architecture"]
        assert {"strength", "weights_sha256", "weight_shapes"} <= set(info["parameters"])
    # Two instances of one architecture: same arch, different seeds and weights.
    assert fakes["tconv_a"]["architecture"] == fakes["tconv_b"]["architecture"]
    assert fakes["tconv_a"]["instance_seed"] != fakes["tconv_b"]["instance_seed"]
    assert fakes["tconv_a"]["parameters"]["weights_sha256"] != fakes["tconv_b"]["parameters"]["weights_sha256"]
    for name in sources:
        files = sorted((tiny_zoo / name).iterdir())
        assert [f.name for f in files] == [f"{i:05d}.png" for i in range(TINY_ZOO_PER_SOURCE)]
        with Image.open(files[0]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"


def test_zoo_is_a_dataset_with_arch_level_classes(tiny_zoo):
    index = scan_dataset(zoo_data_config(tiny_zoo, arch_level=True))
    assert index.real_sources == {REAL_SOURCE}
    assert index.fake_classes == ["bilinear", "nnconv", "pixshuffle", "tconv"]
    assert index.class_of("tconv_a") == index.class_of("tconv_b") == "tconv"
    assert zoo_data_config(tiny_zoo).image_size == 32


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    write_zoo(tmp_path / "a", SMALL, workers=1)
    write_zoo(tmp_path / "b", SMALL, workers=2)  # process pool: same bytes in any order
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    other = ZooSettings(image_size=16, per_source=6, seed=12)
    write_zoo(tmp_path / "c", other, workers=1)
    a, c = digests(tmp_path / "a"), digests(tmp_path / "c")
    assert all(a[k] != c[k] for k in a if k.endswith(".png"))


def test_every_image_is_distinct_and_not_shared_between_sources(tiny_zoo):
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in tiny_zoo.rglob("*.png")]
    assert len(hashes) == len(set(hashes)) == 6 * TINY_ZOO_PER_SOURCE


def test_refuses_a_non_empty_folder_and_bad_settings(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_zoo(tmp_path / "busy", SMALL, workers=1)
    with pytest.raises(ValueError, match="architecture"):
        write_zoo(tmp_path / "x", ZooSettings(image_size=16, per_source=2, sources=("gan_a",)))
    with pytest.raises(ValueError, match="even"):
        write_zoo(tmp_path / "y", ZooSettings(image_size=15, per_source=2))
    with pytest.raises(ValueError, match="distinct"):
        write_zoo(tmp_path / "z", ZooSettings(image_size=16, per_source=2, sources=("tconv_a", "tconv_a")))
    with pytest.raises(ValueError, match="preset"):
        settings_from_config(ZooConfig(preset="hard"))


def test_generators_are_centred_on_bilinear_upsampling():
    """With zero deviation every architecture is exactly bilinear x2; the fingerprint is the deviation."""
    low = np.random.default_rng(0).random((12, 12, 3))
    reference = make_generator("bilinear_ref", 0, 0.0)(low)
    # Bilinear x2 by hand for an interior output pixel: 0.75 / 0.25 weights per axis.
    by_hand = 0.75 * (0.75 * low[5, 5] + 0.25 * low[5, 4]) + 0.25 * (0.75 * low[4, 5] + 0.25 * low[4, 4])
    assert np.allclose(reference[10, 10], by_hand)
    for architecture in ARCHITECTURES:
        assert np.allclose(make_generator(f"{architecture}_x", 0, 0.0)(low), reference)
        fingerprinted = make_generator(f"{architecture}_x", 0, 0.01)(low)
        deviation = np.abs(fingerprinted - reference).mean()
        assert 1e-4 < deviation < 0.05  # present but weak: about as faithful as plain upsampling


def mean_spectrum(folder: Path) -> np.ndarray:
    return np.mean([log_dct_spectrum(np.asarray(Image.open(p).convert("RGB"))) for p in sorted(folder.glob("*.png"))], axis=0)


def test_real_and_fake_spectra_differ_beyond_sampling_noise(tiny_zoo):
    real_files = sorted((tiny_zoo / REAL_SOURCE).glob("*.png"))
    spectra = np.array([log_dct_spectrum(np.asarray(Image.open(p).convert("RGB"))) for p in real_files])
    noise = np.abs(spectra[::2].mean(0) - spectra[1::2].mean(0)).mean()  # real vs real, 20 images each
    real = spectra.mean(0)
    for source in DEFAULT_SOURCES:
        difference = np.abs(mean_spectrum(tiny_zoo / source) - real).mean()
        assert difference > 2 * noise, (source, difference, noise)
    # Transposed convolutions leave their classic checkerboard: extra energy at the Nyquist corner.
    corner = (slice(-4, None), slice(-4, None))
    assert mean_spectrum(tiny_zoo / "tconv_a")[corner].mean() > real[corner].mean() + 0.5


def test_benchmark_zoo_matches_the_real_bandwidth():
    """In the benchmark preset fakes are not simply blurrier: low/mid-band energy matches the reals'."""
    settings = ZooSettings(image_size=32, per_source=24, seed=3)
    real = np.mean([log_dct_spectrum(zoo_module.render(settings, REAL_SOURCE, i)) for i in range(24)], axis=0)
    fake = np.mean([log_dct_spectrum(zoo_module.render(settings, "nnconv_a", i)) for i in range(24)], axis=0)
    band = np.add.outer(np.arange(32), np.arange(32))
    low_mid = (band > 2) & (band < 16)
    assert abs((fake - real)[low_mid].mean()) < 0.2  # measured 0.08; -0.32 without matching


def test_manifest_is_json_and_records_settings(tmp_path):
    manifest = write_zoo(tmp_path / "z", SMALL, workers=1)
    on_disk = json.loads((tmp_path / "z" / "manifest.json").read_text())
    assert on_disk == {**json.loads(json.dumps(manifest)), "complete": True}
    assert on_disk["strength"] == SMALL.strength and on_disk["match_bandwidth"] is True
    # Re-writing the same zoo into its own folder is allowed (and gives the same bytes).
    before = digests(tmp_path / "z")
    write_zoo(tmp_path / "z", SMALL, workers=1)
    assert digests(tmp_path / "z") == before
    with pytest.raises(FileExistsError, match="not empty"):
        write_zoo(tmp_path / "z", ZooSettings(image_size=16, per_source=6, seed=12), workers=1)


def test_an_interrupted_zoo_is_flagged_and_resumable(tmp_path):
    root = tmp_path / "z"
    write_zoo(root, SMALL, workers=1)
    before = digests(root)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    (root / "real" / "00005.png").unlink()  # as if killed before the last image
    with pytest.raises(ValueError, match="incomplete"):
        zoo_data_config(root)
    write_zoo(root, SMALL, workers=1)
    assert digests(root) == before and zoo_data_config(root).root == str(root)

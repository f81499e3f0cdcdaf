"""`attribnet predict` on the paper's imported models against a plain-numpy forward pass of the HDF5 arrays."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from attribnet.cli import main
from coordinator.import_weights import import_paper_weights
from node.import_head import import_paper_head
from shared_backbone.model import signing
from tests.paper_reference import NORMSTATS, PAPER, hdf5_arrays, requires_paper_weights

TOLERANCE = 1e-4
BN_EPSILON = 1e-3

pytestmark = requires_paper_weights

# ----------------------------------------------------------------------------- numpy reference


def conv2d_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """TensorFlow 'same' padding: output ceil(n/s), the odd pixel of padding goes to the bottom/right."""
    size, k = x.shape[0], kernel.shape[0]
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    before = total // 2
    padded = np.pad(x, ((before, total - before), (before, total - before), (0, 0)))
    windows = sliding_window_view(padded, (k, k), axis=(0, 1))[::stride, ::stride]
    return np.einsum("hwcij,ijco->hwo", windows, kernel) + bias


def block(x, weights, prefix, index, stride, batch_norm=True):
    x = conv2d_same(x, weights[(f"{prefix}Conv_{index}", "kernel")], weights[(f"{prefix}Conv_{index}", "bias")], stride)
    if batch_norm:
        bn = lambda name: weights[(f"{prefix}BNorm_{index}", name)]  # noqa: E731
        x = bn("gamma") * (x - bn("moving_mean")) / np.sqrt(bn("moving_variance") + BN_EPSILON) + bn("beta")
    return np.maximum(x, 0.0)


def trunk(x, weights):
    x = block(x, weights, "d", "01", 1, batch_norm=False)
    x = block(x, weights, "d", "02", 2)
    x = block(x, weights, "d", "03", 1)
    return block(x, weights, "d", "04", 2)


def tail(features, weights, prefix, first, second, gap):
    x = block(features, weights, prefix, first, 1)
    x = block(x, weights, prefix, second, 2)
    vector = x.mean(axis=(0, 1)) if gap else x.reshape(-1)
    logit = vector @ weights[(f"{prefix}Decision", "kernel")][:, 0] + weights[(f"{prefix}Decision", "bias")][0]
    return float(1.0 / (1.0 + np.exp(-logit)))


def model_input(path: Path, mode: str) -> np.ndarray:
    image = Image.open(path)
    if mode == "pixel":
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 127.5 - 1.0
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    spectrum = np.log(np.abs(scipy.fft.dctn(grey, type=2, norm="ortho")) + 1e-12)
    mean, std = np.load(NORMSTATS / "mean.npy"), np.load(NORMSTATS / "std_dev.npy")
    return ((spectrum - mean) / std)[..., None]


def reference(path: Path, mode: str, primary_file: str, head_files: dict[str, str]) -> dict:
    primary = hdf5_arrays(PAPER / primary_file, np.float64)
    features = trunk(model_input(path, mode), primary)
    wire = features.astype(np.float16).astype(np.float64)  # the documented fp16 wire format
    gap = mode == "pixel"
    return {
        "fake_score": tail(features, primary, "d", "05", "06", gap),
        "heads": {s: tail(wire, hdf5_arrays(PAPER / f, np.float64), "a", "01", "02", gap) for s, f in head_files.items()},
    }


# ----------------------------------------------------------------------------- fixtures


def synthetic_images(directory: Path) -> list[Path]:
    """Three 128-px PNGs with different content: colour blocks, a disk on a background, smooth ramps."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    images = {
        "blocks": np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((16, 16, 1))) + rng.normal(0, 8, (128, 128, 3)),
        "disk": np.where(((xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.08)[..., None], [200, 120, 90], [40, 70, 160])
        + rng.normal(0, 20, (128, 128, 3)),
        "smooth": np.stack([255 * xx, 255 * yy, 128 + 100 * np.sin(6 * xx * yy)], axis=-1),
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, array in images.items():
        path = directory / f"{name}.png"
        Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


PIXEL_HEADS = {"progan": "attribution_ganfp_progan.h5", "cramergan": "attribution_ganfp_cramergan.h5"}
DCT_HEADS = {"progan": "attribution_ganfp_progan_dct.h5", "cramergan": "attribution_ganfp_cramergan_dct.h5"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    private, public = signing.generate_keypair(root / "keys")
    pixel = import_paper_weights(PAPER / "primary_ganfp_aug.h5", root / "pixel", private)
    dct = import_paper_weights(PAPER / "primary_ganfp_dct_aug.h5", root / "dct", private, normstats_dir=NORMSTATS)
    heads = {"pixel": [], "dct": []}
    for mode, backbone, files in (("pixel", pixel, PIXEL_HEADS), ("dct", dct, DCT_HEADS)):
        for source, file in files.items():
            out = root / f"head_{mode}_{source}"
            import_paper_head(PAPER / file, backbone.path, source, out, public_key_path=public)
            heads[mode].append(str(out))
    return {
        "root": root,
        "public": str(public),
        "bundles": {"pixel": str(pixel.path), "dct": str(dct.path)},
        "heads": heads,
        "images": synthetic_images(root / "images"),
    }


def run_predict(capsys, setup, mode: str, *extra: str) -> tuple[int, list[dict]]:
    args = ["predict", "--backbone", setup["bundles"][mode], "--public-key", setup["public"], "--json"]
    for head in setup["heads"][mode]:
        args += ["--head", head]
    code = main(args + list(extra))
    lines = capsys.readouterr().out.strip().splitlines()
    return code, [json.loads(line) for line in lines]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "mode, primary_file, head_files",
    [("pixel", "primary_ganfp_aug.h5", PIXEL_HEADS), ("dct", "primary_ganfp_dct_aug.h5", DCT_HEADS)],
)
def test_predict_matches_numpy_forward_pass(capsys, setup, mode, primary_file, head_files):
    code, records = run_predict(capsys, setup, mode, "--batch-size", "2", *map(str, setup["images"]))
    assert code == 0
    assert sorted(r["path"] for r in records) == sorted(map(str, setup["images"]))
    scores = []
    for record in records:
        expected = reference(Path(record["path"]), mode, primary_file, head_files)
        assert record["fake_score"] == pytest.approx(expected["fake_score"], abs=TOLERANCE), record["path"]
        assert set(record["heads"]) == set(head_files)
        for source, raw in expected["heads"].items():
            assert record["heads"][source]["raw"] == pytest.approx(raw, abs=TOLERANCE), (record["path"], source)
            assert record["heads"][source]["calibrated"] == pytest.approx(raw, abs=TOLERANCE)  # identity calibration
        if expected["fake_score"] < 0.5:
            assert record["attribution"] == "real"
        else:
            best = max(expected["heads"], key=expected["heads"].get)
            assert record["attribution"] == (best if expected["heads"][best] >= 0.5 else "unknown")
        scores += [expected["fake_score"], *expected["heads"].values()]
    # the comparison has teeth only if some scores are away from 0 and 1
    assert sum(0.02 < s < 0.98 for s in scores) >= 3


def test_corrupt_file_gets_an_error_line_and_non_zero_exit(capsys, setup, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = Image.open(setup["images"][0])
    good.save(folder / "a_good.png")
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    good.convert("RGB").save(folder / "c_good.jpg", quality=95)
    code, records = run_predict(capsys, setup, "pixel", "--batch-size", "2", str(folder), str(tmp_path / "missing.png"))
    assert code == 1
    assert [Path(r["path"]).name for r in records] == ["a_good.png", "b_corrupt.png", "c_good.jpg", "missing.png"]
    by_name = {Path(r["path"]).name: r for r in records}
    assert "error" in by_name["b_corrupt.png"] and "fake_score" not in by_name["b_corrupt.png"]
    assert "no such file" in by_name["missing.png"]["error"]
    for name in ("a_good.png", "c_good.jpg"):
        assert 0.0 <= by_name[name]["fake_score"] <= 1.0 and set(by_name[name]["heads"]) == {"progan", "cramergan"}


def test_readable_output_and_unsigned_warning(capsys, caplog, setup):
    image = str(setup["images"][2])
    with caplog.at_level(logging.WARNING):
        code = main(["predict", "--backbone", setup["bundles"]["pixel"], "--head", setup["heads"]["pixel"][0], image])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: fake ") and "progan raw " in line and " -> " in line
    assert any("signature is NOT" in record.getMessage() for record in caplog.records)


def test_wrong_public_key_is_refused(capsys, setup, tmp_path):
    _, other_public = signing.generate_keypair(tmp_path / "other")
    code = main(["predict", "--backbone", setup["bundles"]["pixel"], "--public-key", str(other_public), str(setup["images"][0])])
    assert code == 2
    assert "signature does not verify" in capsys.readouterr().err


def test_head_of_another_backbone_is_refused(capsys, setup):
    code = main(["predict", "--backbone", setup["bundles"]["pixel"], "--head", setup["heads"]["dct"][0], str(setup["images"][0])])
    assert code == 2
    assert "was trained on backbone" in capsys.readouterr().err


@pytest.mark.parametrize("mode, method", [("pixel", "cam"), ("dct", "grad-cam")])
def test_heatmaps_written_and_differ(capsys, setup, tmp_path, mode, method):
    out = tmp_path / "heatmaps"
    code, records = run_predict(capsys, setup, mode, "--heatmap", str(out), *map(str, setup["images"]))
    assert code == 0
    pictures = []
    for record in records:
        path = Path(record["heatmap"])
        assert path.parent == out and path.name == f"{Path(record['path']).stem}_heatmap.png"
        assert record["heatmap_method"] == method
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            assert picture.size == ((256, 256) if mode == "pixel" else (512, 256))  # 128 px models, enlarged x2
            pictures.append(np.asarray(picture.convert("RGB"), dtype=np.int16))
    for i in range(len(pictures)):
        for j in range(i + 1, len(pictures)):
            assert np.abs(pictures[i] - pictures[j]).mean() > 1.0

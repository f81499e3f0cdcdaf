"""The one preprocessing path: decoding every common mode, orientation, crop, scaling, DCT, normstats
and clear errors for bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared_backbone.model.preprocessing import (
    ImageDecodeError,
    InputSpec,
    Normstats,
    NormstatsAccumulator,
    center_crop_resize,
    decode_image,
    load_image,
    log_dct_spectrum,
    preprocess,
    to_model_input,
)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb_image(width: int = 24, height: int = 16) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_png_and_jpeg_decode_to_rgb():
    image = rgb_image()
    decoded = decode_image(encode(image))
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), np.asarray(image))
    jpeg = decode_image(encode(image, "JPEG", quality=95))
    assert jpeg.mode == "RGB" and jpeg.size == image.size


def test_every_mode_becomes_rgb():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, mode="L")
    assert np.array_equal(np.asarray(decode_image(encode(grey)))[..., 0], np.asarray(grey))
    palette = rgb_image(8, 8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert np.array_equal(np.asarray(decode_image(encode(palette))), np.asarray(palette.convert("RGB")))
    # Transparent pixels are flattened onto white, opaque ones keep their colour.
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255
    flat = np.asarray(decode_image(encode(Image.fromarray(rgba, mode="RGBA"))))
    assert flat[0, 0].tolist() == [200, 0, 0] and flat[3, 0].tolist() == [255, 255, 255]
    transparent_palette = Image.fromarray(rgba, mode="RGBA").convert("P")
    assert decode_image(encode(transparent_palette)).mode == "RGB"
    la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), np.full((4, 4), 255, np.uint8)], -1), mode="LA")
    assert np.asarray(decode_image(encode(la)))[0, 0].tolist() == [50, 50, 50]
    # 16-bit greyscale is scaled into 8 bits, not clipped.
    deep = Image.fromarray(np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    assert deep.mode == "I;16"
    decoded = np.asarray(decode_image(encode(deep)))
    assert decoded.dtype == np.uint8 and decoded.max() == 255 and decoded.min() == 0
    assert len(np.unique(decoded[..., 0])) == 16
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    red = np.asarray(decode_image(encode(cmyk, "JPEG", quality=95)))[4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_exif_orientation_is_honoured():
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :5] = 255  # a white band on the left of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())
    upright = np.asarray(decode_image(data))
    assert upright.shape == (20, 10, 3)  # portrait once rotated
    assert upright[:5].mean() > 200 and upright[-5:].mean() < 50  # the band is now on top


def test_center_crop_of_a_non_square_image():
    array = np.zeros((40, 60, 3), dtype=np.uint8)
    array[:, :10] = 255  # left margin: cropped away
    array[:, 50:] = 128  # right margin: cropped away
    array[:, 10:50] = 60
    square = center_crop_resize(Image.fromarray(array), 40)
    assert square.shape == (40, 40, 3) and np.all(square == 60)
    small = center_crop_resize(Image.fromarray(array), 16)
    assert small.shape == (16, 16, 3) and np.all(np.abs(small.astype(int) - 60) <= 1)
    tall = load_image(encode(Image.fromarray(np.transpose(array, (1, 0, 2)))), 20)
    assert tall.shape == (20, 20, 3) and np.all(np.abs(tall.astype(int) - 60) <= 1)


def test_pixel_scaling_range():
    spec = InputSpec(16, "pixel")
    values = np.zeros((16, 16, 3), dtype=np.uint8)
    values[0, 0] = 255
    values[0, 1] = 128
    out = to_model_input(values, spec)
    assert out.dtype == np.float32 and out.shape == (16, 16, 3)
    assert out.min() == -1.0 and out.max() == 1.0 and out[0, 1, 0] == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    with pytest.raises(ValueError, match="16x16x3"):
        to_model_input(np.zeros((8, 8, 3), np.uint8), spec)


def test_residual_input_is_the_pixels_minus_their_local_mean():
    """Flat regions (content) give zero; a one-pixel dot keeps 8/9 of its step times the gain; one batch
    equals the single images (training and serving share it)."""
    from shared_backbone.model.preprocessing import RESIDUAL_GAIN, to_model_inputs

    spec = InputSpec(16, "residual")
    flat = np.full((16, 16, 3), 200, dtype=np.uint8)
    assert np.abs(to_model_input(flat, spec)).max() < 1e-6
    dot = flat.copy()
    dot[8, 8] = 245
    out = to_model_input(dot, spec)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    assert out[8, 8, 0] == pytest.approx(RESIDUAL_GAIN * (45 / 127.5) * 8 / 9, rel=1e-5)
    assert out[8, 9, 0] == pytest.approx(-RESIDUAL_GAIN * (45 / 127.5) / 9, rel=1e-5) and out[0, 0, 0] == 0.0
    batch = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_model_inputs(batch, spec), np.stack([to_model_input(image, spec) for image in batch]))


def direct_dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II from its definition (no FFT)."""
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    matrix[0] /= np.sqrt(2.0)
    return matrix


def test_log_dct_matches_a_direct_computation():
    rgb = np.asarray(rgb_image(16, 16))
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)
    c = direct_dct_matrix(16)
    expected = np.log(np.abs(c @ grey @ c.T) + 1e-12)
    assert np.allclose(log_dct_spectrum(rgb), expected, atol=1e-9)
    # DCT mode = that spectrum standardised with the normstats.
    stats = Normstats(mean=np.full((16, 16), 1.0), std=np.full((16, 16), 2.0))
    out = to_model_input(rgb, InputSpec(16, "dct", stats))
    assert out.shape == (16, 16, 1) and np.allclose(out[..., 0], (expected - 1.0) / 2.0, atol=1e-5)
    with pytest.raises(ValueError, match="normstats"):
        to_model_input(rgb, InputSpec(16, "dct"))


def test_normstats_accumulator_equals_numpy_on_a_batch(tmp_path):
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    accumulator = NormstatsAccumulator(16)
    for rgb in batch:
        accumulator.add(rgb)
    spectra = np.stack([log_dct_spectrum(rgb) for rgb in batch])
    stats = accumulator.result()
    assert np.allclose(stats.mean, spectra.mean(axis=0)) and np.allclose(stats.std, spectra.std(axis=0))
    stats.save(tmp_path / "ns")
    assert {p.name for p in (tmp_path / "ns").iterdir()} == {"mean.npy", "std_dev.npy"}
    loaded = Normstats.load(tmp_path / "ns")
    assert np.array_equal(loaded.mean, stats.mean) and np.array_equal(loaded.std, stats.std)
    with pytest.raises(ValueError, match="at least 2"):
        NormstatsAccumulator(16).result()
    with pytest.raises(ValueError, match="does not match"):
        InputSpec(32, "dct", loaded)
    with pytest.raises(FileNotFoundError, match="mean.npy"):
        Normstats.load(tmp_path / "missing")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello, I am a text file", "not a recognised image"),
        (encode(Image.new("RGB", (32, 32), (1, 2, 3)))[:60], "corrupt"),
        (encode(rgb_image(64, 64), "JPEG")[:200], "corrupt"),
    ],
    ids=["empty", "text", "truncated-png", "truncated-jpeg"],
)
def test_bad_bytes_raise_image_decode_error_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        preprocess(data, InputSpec(16))


def test_max_pixels_and_missing_files(tmp_path):
    data = encode(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageDecodeError, match="above the limit of 5000"):
        decode_image(data, max_pixels=5000)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        decode_image(tmp_path / "nope.png")
    path = tmp_path / "ok.png"
    path.write_bytes(encode(rgb_image(16, 16)))
    assert np.array_equal(preprocess(path, InputSpec(16)), preprocess(path.read_bytes(), InputSpec(16)))

"""Each perturbation does what it claims, at the strength it claims."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared_backbone.config import PerturbConfig
from shared_backbone.data.perturbations import (
    check_config,
    gaussian_blur,
    gaussian_noise,
    jpeg,
    perturb_fixed,
    perturb_randomly,
    random_crop_resize,
)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 48 px image with edges and fine texture (smooth gradient + blocks + noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:48]
    base = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.float64)
    base[10:30, 14:40] = [220, 40, 90]
    base += rng.normal(0, 20, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def high_frequency_energy(rgb: np.ndarray) -> float:
    grey = rgb.astype(np.float64).mean(axis=2)
    window = np.outer(np.hanning(grey.shape[0]), np.hanning(grey.shape[1]))  # no wrap-around edge
    grey = (grey - grey.mean()) * window
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(grey))) ** 2
    n = grey.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    return float(spectrum[np.hypot(yy, xx) > n / 8].sum())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_blur_lowers_high_frequency_energy_monotonically(image):
    energies = [high_frequency_energy(gaussian_blur(image, sigma)) for sigma in (0.0, 0.5, 1.0, 2.0, 3.0)]
    assert all(later < earlier for earlier, later in zip(energies, energies[1:])), energies
    assert energies[-1] < 0.05 * energies[0]
    assert np.array_equal(gaussian_blur(image, 0.0), image)
    blurred = gaussian_blur(image, 2.0)
    assert blurred.shape == image.shape and blurred.dtype == np.uint8
    assert abs(blurred.astype(float).mean() - image.astype(float).mean()) < 2  # blur keeps the brightness


def test_jpeg_is_a_real_encode_at_that_quality(image):
    q10, q90 = jpeg(image, 10), jpeg(image, 90)
    assert q10.shape == q90.shape == image.shape and q10.dtype == np.uint8
    assert q10.tobytes() != q90.tobytes()
    assert psnr(image, q10) < psnr(image, q90)
    assert psnr(image, q90) > 20
    # Same pixels as Pillow's own encoder at that quality, decoded independently.
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=10)
    assert np.array_equal(q10, np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    qualities = [psnr(image, jpeg(image, q)) for q in (5, 30, 60, 95)]
    assert qualities == sorted(qualities)


def test_noise_std_matches_sigma():
    grey = np.full((128, 128, 3), 128, dtype=np.uint8)
    for sigma in (0.02, 0.05, 0.1):
        noisy = gaussian_noise(grey, sigma, np.random.default_rng(1))
        difference = noisy.astype(np.float64) - 128
        assert difference.std() == pytest.approx(sigma * 255, rel=0.03)
        assert abs(difference.mean()) < 0.5
    assert np.array_equal(gaussian_noise(grey, 0.0, np.random.default_rng(1)), grey)
    a = gaussian_noise(grey, 0.05, np.random.default_rng(1))
    assert np.array_equal(a, gaussian_noise(grey, 0.05, np.random.default_rng(1)))
    assert not np.array_equal(a, gaussian_noise(grey, 0.05, np.random.default_rng(2)))


def test_crop_changes_content_but_keeps_size(image):
    cropped = random_crop_resize(image, 0.5, np.random.default_rng(3))
    assert cropped.shape == image.shape and cropped.dtype == np.uint8
    assert np.abs(cropped.astype(int) - image.astype(int)).mean() > 10
    assert np.array_equal(cropped, random_crop_resize(image, 0.5, np.random.default_rng(3)))
    positions = {random_crop_resize(image, 0.5, np.random.default_rng(s)).tobytes() for s in range(8)}
    assert len(positions) > 1  # the crop position is random
    assert np.array_equal(random_crop_resize(image, 1.0, np.random.default_rng(0)), image)
    # The crop is magnified back to full size: a ramp of 4 levels per pixel becomes 2 per pixel.
    ramp = np.repeat(np.repeat((np.arange(48) * 4).astype(np.uint8)[None, :, None], 48, axis=0), 3, axis=2)
    magnified = random_crop_resize(ramp, 0.5, np.random.default_rng(0)).astype(float)
    assert np.diff(magnified[:, 4:-4, 0], axis=1).mean() == pytest.approx(2.0, abs=0.2)


def test_fixed_perturbations_and_their_errors(image):
    assert np.array_equal(perturb_fixed(image, "jpeg", 75), jpeg(image, 75))
    assert np.array_equal(perturb_fixed(image, "blur", 1.0), gaussian_blur(image, 1.0))
    assert perturb_fixed(image, "crop", 0.8, np.random.default_rng(0)).shape == image.shape
    assert perturb_fixed(image, "noise", 0.1, np.random.default_rng(0)).shape == image.shape
    for kind, value, message in [
        ("jpeg", 0, "quality"), ("jpeg", 101, "quality"), ("blur", -1, "sigma"),
        ("crop", 0, "fraction"), ("crop", 1.5, "fraction"), ("noise", 2, "sigma"), ("sharpen", 1, "unknown"),
    ]:
        with pytest.raises(ValueError, match=message):
            perturb_fixed(image, kind, value)
    with pytest.raises(ValueError, match="uint8"):
        gaussian_blur(image.astype(np.float32), 1.0)


@pytest.mark.parametrize("kind", ["blur", "crop", "jpeg", "noise", "multi"])
def test_probability_zero_is_identity_and_one_always_applies(image, kind):
    rng = np.random.default_rng(0)
    never = PerturbConfig(kinds=[kind], probability=0.0)
    always = PerturbConfig(kinds=[kind], probability=1.0, blur_sigma=[1.0, 2.0], crop_fraction=[0.5, 0.7], jpeg_quality=[20, 40], noise_sigma=[0.05, 0.1])
    for _ in range(10):
        assert np.array_equal(perturb_randomly(image, never, rng), image)
        out = perturb_randomly(image, always, rng)
        assert out.shape == image.shape and not np.array_equal(out, image)


def test_probability_is_the_per_kind_rate(image):
    rng = np.random.default_rng(5)
    half = PerturbConfig(kinds=["jpeg"], probability=0.5, jpeg_quality=[30, 30])
    changed = sum(not np.array_equal(perturb_randomly(image, half, rng), image) for _ in range(400))
    assert 160 < changed < 240  # binomial(400, 0.5): +-4 sigma
    # multi = each of the four independently: all four skipped with probability 0.5^4.
    multi = PerturbConfig(kinds=["multi"], probability=0.5, blur_sigma=[1, 1], crop_fraction=[0.6, 0.6], jpeg_quality=[30, 30], noise_sigma=[0.05, 0.05])
    untouched = sum(np.array_equal(perturb_randomly(image, multi, rng), image) for _ in range(800))
    assert 20 < untouched < 80  # expected 50


def test_parameters_are_drawn_from_the_ranges(image):
    """Blur drawn in [2, 3] is always blurrier than blur 1.5 and never as blurry as blur 3.5."""
    config = PerturbConfig(kinds=["blur"], probability=1.0, blur_sigma=[2.0, 3.0])
    rng = np.random.default_rng(0)
    low, high = high_frequency_energy(gaussian_blur(image, 3.5)), high_frequency_energy(gaussian_blur(image, 1.5))
    energies = [high_frequency_energy(perturb_randomly(image, config, rng)) for _ in range(20)]
    assert all(low < e < high for e in energies)
    assert len(set(np.round(energies, 3))) > 5


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="perturb.kinds"):
        check_config(PerturbConfig(kinds=["sharpen"]))
    with pytest.raises(ValueError, match="perturb.probability"):
        check_config(PerturbConfig(kinds=["blur"], probability=1.5))
    with pytest.raises(ValueError, match="perturb.jpeg_quality"):
        check_config(PerturbConfig(kinds=["jpeg"], jpeg_quality=[90, 30]))
    with pytest.raises(ValueError, match="perturb.noise_sigma"):
        check_config(PerturbConfig(kinds=["noise"], noise_sigma=[0.0, 3.0]))
    check_config(PerturbConfig(kinds=["multi"]))
    with pytest.raises(ValueError, match="unknown kind"):
        perturb_randomly(np.zeros((8, 8, 3), np.uint8), PerturbConfig(kinds=["sharpen"]), np.random.default_rng())

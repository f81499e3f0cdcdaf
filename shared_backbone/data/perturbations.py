"""Image perturbations for robustness training and for perturbed test sets.

Every function takes and returns a uint8 HxWx3 RGB array of the same size, so a perturbation can
sit between `load_image` and `to_model_input` without changing anything around it. The four
kinds are the ones Frank et al. and Khoo et al. evaluate: Gaussian blur, random crop + resize,
JPEG compression (a real Pillow encode/decode at the given quality) and Gaussian noise.
`multi` is the paper's combination: each of the four independently, each with the probability.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from shared_backbone.config import PerturbConfig

log = logging.getLogger(__name__)

KINDS = ("blur", "crop", "jpeg", "noise")
ALL_KINDS = (*KINDS, "multi")
RESAMPLE = Image.Resampling.BICUBIC


def image_rng(path: str | Path, seed: int = 0) -> np.random.Generator:
    """The random stream that perturbs one image: a function of (seed, its source folder, its file
    name), so every evaluator perturbs a given test image identically, whatever list it is in."""
    path = Path(path)
    key = int.from_bytes(hashlib.sha256(f"{path.parent.name}/{path.name}".encode()).digest()[:8], "big")
    return np.random.default_rng([seed, key])


def _check(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each channel with a Gaussian of `sigma` pixels (0 = unchanged)."""
    _check(rgb)
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return rgb.copy()
    blurred = gaussian_filter(rgb.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect", truncate=4.0)
    return np.clip(np.round(blurred), 0, 255).astype(np.uint8)


def random_crop_resize(rgb: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Crop a random window of `fraction` of each side (a square on square images) and resize it
    back to the full size (bicubic): a zoom into a random part of the image."""
    _check(rgb)
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    height, width = rgb.shape[:2]
    crop_h, crop_w = max(1, int(round(height * fraction))), max(1, int(round(width * fraction)))
    if (crop_h, crop_w) == (height, width):
        return rgb.copy()
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    crop = Image.fromarray(rgb[top : top + crop_h, left : left + crop_w])
    return np.asarray(crop.resize((width, height), RESAMPLE), dtype=np.uint8)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """A real JPEG round trip through Pillow at `quality` (1-100, 4:2:0 chroma as cameras do)."""
    _check(rgb)
    quality = int(round(quality))
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise of std `sigma` in [0, 1] image units (0.1 = 25.5 grey levels)."""
    _check(rgb)
    if not 0 <= sigma <= 1:
        raise ValueError(f"noise sigma must be in [0, 1], got {sigma}")
    if sigma == 0:
        return rgb.copy()
    noisy = rgb.astype(np.float64) + rng.standard_normal(rgb.shape) * (sigma * 255.0)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def perturb_fixed(rgb: np.ndarray, kind: str, value: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """One perturbation at one setting (for writing a perturbed test set).

    `value` is the blur sigma, crop fraction, JPEG quality or noise sigma; for `multi`, the
    probability with which each of blur, crop, JPEG and noise is applied, at parameters drawn
    from the default ranges of `PerturbConfig` (the combined test of Wang et al. and Frank et al.).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if kind == "multi":
        if not 0 <= value <= 1:
            raise ValueError(f"multi: the probability per perturbation must be in [0, 1], got {value}")
        return perturb_randomly(rgb, PerturbConfig(kinds=["multi"], probability=float(value)), rng)
    if kind == "blur":
        return gaussian_blur(rgb, float(value))
    if kind == "crop":
        return random_crop_resize(rgb, float(value), rng)
    if kind == "jpeg":
        return jpeg(rgb, int(round(value)))
    if kind == "noise":
        return gaussian_noise(rgb, float(value), rng)
    raise ValueError(f"unknown perturbation {kind!r}; expected one of {ALL_KINDS}")


def _draw(rng: np.random.Generator, bounds: list[float], name: str) -> float:
    if len(bounds) == 1:
        return float(bounds[0])
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise ValueError(f"perturb.{name} must be [low, high] with low <= high, got {bounds}")
    return float(rng.uniform(bounds[0], bounds[1]))


def _apply_random(rgb: np.ndarray, kind: str, config: PerturbConfig, rng: np.random.Generator) -> np.ndarray:
    if kind == "blur":
        return gaussian_blur(rgb, _draw(rng, config.blur_sigma, "blur_sigma"))
    if kind == "crop":
        return random_crop_resize(rgb, _draw(rng, config.crop_fraction, "crop_fraction"), rng)
    if kind == "jpeg":
        low, high = config.jpeg_quality[0], config.jpeg_quality[-1]
        return jpeg(rgb, int(rng.integers(int(low), int(high) + 1)))
    return gaussian_noise(rgb, _draw(rng, config.noise_sigma, "noise_sigma"), rng)


def check_config(config: PerturbConfig) -> None:
    """Raises ValueError naming the bad `perturb.*` setting (call once, before a long run)."""
    unknown = [k for k in config.kinds if k not in ALL_KINDS]
    if unknown:
        raise ValueError(f"perturb.kinds: unknown kind {unknown[0]!r}; expected some of {ALL_KINDS}")
    if not 0 <= config.probability <= 1:
        raise ValueError(f"perturb.probability must be in [0, 1], got {config.probability}")
    for name in ("blur_sigma", "crop_fraction", "jpeg_quality", "noise_sigma"):
        bounds = getattr(config, name)
        if len(bounds) not in (1, 2) or (len(bounds) == 2 and bounds[0] > bounds[1]):
            raise ValueError(f"perturb.{name} must be [low, high] with low <= high, got {bounds}")
    checks = {
        "blur_sigma": lambda v: v >= 0,
        "crop_fraction": lambda v: 0 < v <= 1,
        "jpeg_quality": lambda v: 1 <= v <= 100,
        "noise_sigma": lambda v: 0 <= v <= 1,
    }
    for name, ok in checks.items():
        bad = [v for v in getattr(config, name) if not ok(v)]
        if bad:
            raise ValueError(f"perturb.{name}: value {bad[0]} out of range")


def perturb_randomly(rgb: np.ndarray, config: PerturbConfig, rng: np.random.Generator) -> np.ndarray:
    """Each kind in `config.kinds` with `config.probability`, parameters uniform in the config ranges.

    `multi` expands to blur, crop, jpeg and noise, each drawn independently (the paper's setting);
    kinds are applied in the fixed order blur, crop, jpeg, noise whatever order they are listed in.
    """
    _check(rgb)
    kinds = set()
    for kind in config.kinds:
        if kind == "multi":
            kinds.update(KINDS)
        elif kind in KINDS:
            kinds.add(kind)
        else:
            raise ValueError(f"perturb.kinds: unknown kind {kind!r}; expected some of {ALL_KINDS}")
    out = rgb
    for kind in KINDS:
        if kind in kinds and rng.random() < config.probability:
            out = _apply_random(out, kind, config, rng)
    return out if out is not rgb else rgb.copy()

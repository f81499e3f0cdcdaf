"""Image decoding and model-input preparation, shared verbatim by training, nodes and the gateway.

The pipeline is: bytes -> `decode_image` (Pillow, EXIF orientation, RGB) -> `center_crop_resize`
(uint8 HxWx3 at the model size) -> optional perturbation -> `to_model_input` (pixel scaling, the
pixels' high-pass residual, or the normalised log-DCT spectrum; `to_model_inputs` is the same for a
batch, one vectorised DCT). Anything that feeds a model goes through one of them.

`residual` input is the scaled pixels minus their 3x3 local mean, times `RESIDUAL_GAIN`: a fixed
high-pass that leaves a generator's pixel-level fingerprint and removes most of the content. On raw
pixels a small CNN learns the scenes instead: gdaconv on the easy zoo preset (64 px, 400 images a
source, 15 epochs) reached 0.405 on raw pixels and 0.978 on this residual (`docs/design-notes.md`).

Decoding is built for hostile input, since the gateway decodes whatever a client uploads: only
the formats in `ACCEPTED_FORMATS` are opened (no EPS, PSD, TIFF, ... decoders run), a JPEG much
larger than the model input is decoded reduced (`Image.draft`, before any pixel is allocated),
the decoded size is checked against `max_pixels` and an optional per-request `PixelBudget` from
the header alone, before decoding, and every failure of a decoder becomes `ImageDecodeError`.

Serving and offline prediction never upscale: an image whose shorter side is below the model
size raises `ImageTooSmall` (`refuse_upscaling=True`), which callers answer as out of scope.
Upscaling replaces an image's high frequencies, where a generator's fingerprint lives, with the
resampler's own, so the heads would judge the resampler. Training keeps resizing either way.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.ndimage
from PIL import Image, ImageOps, UnidentifiedImageError

MODES = ("pixel", "residual", "dct")
RESIDUAL_GAIN = 4.0  # the residual's spread brought near the pixels' (it is a few grey levels)
DCT_LOG_EPSILON = 1e-12
DEFAULT_MAX_PIXELS = 40_000_000
RESAMPLE = Image.Resampling.BICUBIC
# The decoders that may run on untrusted bytes (GIF and animated WebP: first frame only).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
# File suffixes of the accepted formats: what a folder search picks up (nothing it would then refuse).
ACCEPTED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale while its short side stays >= this many model sides,
# so the bicubic resize that follows still downsamples (a 4000 px photo is never decoded whole).
DRAFT_MARGIN = 2


def channels_for(mode: str) -> int:
    """Pixel and residual inputs are RGB, DCT inputs one log-spectrum channel."""
    if mode not in MODES:
        raise ValueError(f"unknown input mode {mode!r}; expected one of {MODES}")
    return 1 if mode == "dct" else 3


def check_image_size(image_size: int) -> None:
    """Every model halves the input four times (trunk /4, tails /2 more, baselines /8)."""
    if image_size <= 0 or image_size % 16:
        raise ValueError(f"image size {image_size} must be a positive multiple of 16")


class ImageDecodeError(ValueError):
    """An input that is not a usable image; the message says why."""


class ImageTooSmall(ValueError):
    """A valid image too small to judge without upscaling (not an error of the request); the message says why."""


def too_small_reason(width: int, height: int, size: int) -> str:
    """One line for an input whose shorter side is below the model size."""
    return (f"too small to judge: {width}x{height} px, shorter side below the backbone's {size} px input "
            "(upscaling would erase a generator's fingerprint)")


class PixelBudget:
    """Decoded pixels one request may still allocate, shared by the threads decoding its images.

    `reserve` is called with each image's size from its header, before its pixels are decoded, so
    a request of many small-file, huge-image bombs is refused before it allocates anything big.
    """

    def __init__(self, pixels: int) -> None:
        self.remaining = int(pixels)
        self.limit = int(pixels)
        self._lock = threading.Lock()

    def reserve(self, pixels: int) -> None:
        with self._lock:
            if pixels > self.remaining:
                raise ImageDecodeError(
                    f"the request's images decode to more than {self.limit} pixels in total (the per-request budget)"
                )
            self.remaining -= pixels


@dataclass(frozen=True)
class Normstats:
    """Per-coefficient mean and standard deviation of the log-DCT spectrum."""

    mean: np.ndarray
    std: np.ndarray

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "mean.npy", self.mean.astype(np.float64))
        np.save(directory / "std_dev.npy", self.std.astype(np.float64))

    @classmethod
    def load(cls, directory: str | Path) -> "Normstats":
        """Reads `mean.npy` and `std_dev.npy` (the paper's file names)."""
        directory = Path(directory)
        try:
            mean = np.load(directory / "mean.npy")
            std = np.load(directory / "std_dev.npy")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"normstats: {exc.filename} not found") from None
        if mean.shape != std.shape or mean.ndim != 2:
            raise ValueError(f"normstats in {directory}: mean {mean.shape} and std {std.shape} must be equal 2-D shapes")
        return cls(mean=mean, std=std)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: square size, input mode and (for DCT) the normstats."""

    image_size: int
    mode: str = "pixel"
    normstats: Normstats | None = None

    def __post_init__(self) -> None:
        check_image_size(self.image_size)
        if self.mode not in MODES:
            raise ValueError(f"unknown input mode {self.mode!r}; expected one of {MODES}")
        if self.normstats is not None and self.normstats.mean.shape != (self.image_size, self.image_size):
            raise ValueError(
                f"normstats shape {self.normstats.mean.shape} does not match image size {self.image_size}"
            )

    @property
    def channels(self) -> int:
        return channels_for(self.mode)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)


def decode_image(
    data: bytes | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_size: int = 0,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """Decodes accepted-format bytes or a file into an upright RGB image, or raises ImageDecodeError.

    `target_size` (the model side) lets a large JPEG decode reduced; `max_pixels` and `budget` are
    checked on the size the decoder will allocate, before it runs.
    """
    if isinstance(data, (str, Path)):
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise ImageDecodeError(f"cannot read file: {exc.strerror}") from None
    if not data:
        raise ImageDecodeError("empty input (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            _draft(image, target_size)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"image is {width}x{height} pixels, above the limit of {max_pixels}")
            if budget is not None:
                budget.reserve(width * height)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format (accepted: {', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"corrupt image: {exc}") from None
    except MemoryError:
        raise ImageDecodeError("image too large to decode") from None
    except Exception as exc:  # noqa: BLE001 - a decoder's unexpected error on hostile bytes is still bad input
        raise ImageDecodeError(f"corrupt image: {type(exc).__name__}: {exc}") from None


def _draft(image: Image.Image, target_size: int) -> None:
    """Asks the JPEG decoder for a reduced scale when the image is far larger than the model input."""
    if not target_size or image.format != "JPEG":
        return
    width, height = image.size
    keep = DRAFT_MARGIN * target_size
    if min(width, height) < 2 * keep:
        return
    scale = keep / min(width, height)
    image.draft(image.mode, (max(1, int(width * scale)), max(1, int(height * scale))))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flattens alpha onto white and converts every mode (L, P, CMYK, I;16, ...) to RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        scaled = np.clip(array / max(array.max(), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """Largest centred square, resized (bicubic) to size x size; returns uint8 HxWx3."""
    width, height = image.size
    side = min(width, height)
    if side == 0:
        raise ImageDecodeError("image has a zero-sized dimension")
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side)) if (width, height) != (side, side) else image
    if side != size:
        square = square.resize((size, size), RESAMPLE)
    return np.asarray(square, dtype=np.uint8)


def load_image(
    data: bytes | str | Path, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, budget: PixelBudget | None = None,
    refuse_upscaling: bool = False,
) -> np.ndarray:
    """Decode + centre-crop + resize: the uint8 RGB array every model input starts from.

    With `refuse_upscaling`, an image whose shorter side is below `size` raises ImageTooSmall.
    """
    image = decode_image(data, max_pixels=max_pixels, target_size=size, budget=budget)
    if refuse_upscaling and min(image.size) < size:
        raise ImageTooSmall(too_small_reason(*image.size, size))
    return center_crop_resize(image, size)


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """Pillow's `convert("L")` (ITU-R 601-2 luma, rounded), as the paper's data preparation did."""
    return np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"), dtype=np.float64)


def log_dct_spectrum(rgb: np.ndarray) -> np.ndarray:
    """log(|DCT-II|) of the greyscale image (orthonormal 2-D), float64 HxW."""
    coefficients = scipy.fft.dctn(grayscale(rgb), type=2, norm="ortho")
    return np.log(np.abs(coefficients) + DCT_LOG_EPSILON)


def to_model_input(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 HxWx3 at the model size -> float32 model input (pixel: x/127.5-1; DCT: normalised log-DCT)."""
    if rgb.shape != (spec.image_size, spec.image_size, 3):
        raise ValueError(f"expected a {spec.image_size}x{spec.image_size}x3 image, got {rgb.shape}")
    if spec.mode == "pixel":
        return (rgb.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    if spec.mode == "residual":
        return pixel_residuals(rgb[None])[0]
    if spec.normstats is None:
        raise ValueError("DCT input needs normstats (attribnet data normstats)")
    spectrum = (log_dct_spectrum(rgb) - spec.normstats.mean) / spec.normstats.std
    return spectrum[..., None].astype(np.float32)


def to_model_inputs(rgbs: list[np.ndarray] | np.ndarray, spec: InputSpec) -> np.ndarray:
    """`to_model_input` for a batch (N, H, W, 3) -> (N, H, W, C) float32, equal to it element for element.

    One numpy pass for the pixel scaling and one batched DCT (scipy's pocketfft, which releases
    the GIL) instead of per-image Python work.
    """
    batch = np.stack(rgbs) if isinstance(rgbs, list) else np.asarray(rgbs)
    if batch.ndim != 4 or batch.shape[1:] != (spec.image_size, spec.image_size, 3):
        raise ValueError(f"expected N x {spec.image_size}x{spec.image_size}x3 images, got {batch.shape}")
    if spec.mode == "pixel":
        return (batch.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    if spec.mode == "residual":
        return pixel_residuals(batch)
    if spec.normstats is None:
        raise ValueError("DCT input needs normstats (attribnet data normstats)")
    grey = np.stack([grayscale(rgb) for rgb in batch])
    spectra = np.log(np.abs(scipy.fft.dctn(grey, type=2, norm="ortho", axes=(1, 2))) + DCT_LOG_EPSILON)
    return ((spectra - spec.normstats.mean) / spec.normstats.std)[..., None].astype(np.float32)


def pixel_residuals(batch: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 scaled pixels minus their 3x3 mean (edges reflected), x RESIDUAL_GAIN."""
    pixels = batch.astype(np.float32) / 127.5 - 1.0
    local_mean = scipy.ndimage.uniform_filter(pixels, size=(1, 3, 3, 1), mode="reflect")
    return ((pixels - local_mean) * RESIDUAL_GAIN).astype(np.float32)


def preprocess(data: bytes | str | Path, spec: InputSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes or path -> model input; the single entry point for serving and offline prediction."""
    return to_model_input(load_image(data, spec.image_size, max_pixels=max_pixels), spec)


class NormstatsAccumulator:
    """Streaming per-coefficient mean/variance of the log-DCT spectrum (Chan et al. merge)."""

    def __init__(self, image_size: int) -> None:
        self.count = 0
        self.mean = np.zeros((image_size, image_size), dtype=np.float64)
        self.m2 = np.zeros((image_size, image_size), dtype=np.float64)

    def add(self, rgb: np.ndarray) -> None:
        spectrum = log_dct_spectrum(rgb)
        self.count += 1
        delta = spectrum - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (spectrum - self.mean)

    def result(self) -> Normstats:
        if self.count < 2:
            raise ValueError("normstats need at least 2 images")
        std = np.sqrt(self.m2 / self.count)
        return Normstats(mean=self.mean.copy(), std=np.maximum(std, 1e-8))

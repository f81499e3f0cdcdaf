"""The fingerprint zoo: a synthetic attribution benchmark that needs no download.

"Real" images come from a natural-image model: dead-leaves occlusion (disc radii with a power-law
distribution, so the image is scale invariant) whose leaves carry 1/f texture, rendered
supersampled, plus a little sensor noise, then an optical blur. Each "generator" is a fixed, seeded
x2 upsampling network (transposed conv, nearest+conv, bilinear+conv, pixel shuffle) applied to a
half-resolution real-model image, so every source leaves the kind of spectral fingerprint Frank
et al. measured on real GANs (uneven polyphase gains, checkerboard energy at Nyquist).

Two knobs keep it from being trivially separable (both measured on a prototype, see docs/design-notes.md):
the networks' weights are centred on an identity-like interpolation (bilinear), so a fake is
about as faithful as plain upsampling and its fingerprint is weak; and the real images' optical
blur matches the fakes' bandwidth, so "missing fine detail" alone does not give fakes away.

`quick_settings` is an easy variant for fast tests (strong fingerprints, reals sharper than fakes).

Every image is a pure function of (seed, source, index): the zoo is byte-for-byte reproducible
and can be written by several processes in any order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from shared_backbone.config import DataConfig

log = logging.getLogger(__name__)

REAL_SOURCE = "real"
MANIFEST_FILE = "manifest.json"
ZOO_FORMAT = 1
# modconv is StyleGAN2-like (modulated, demodulated conv with noise injection): a family of its
# own, for the open-set benchmark's generator that no training set and no node's self-made
# negatives contain.
ARCHITECTURES = ("tconv", "nnconv", "bilinear", "pixshuffle", "modconv")
DEFAULT_SOURCES = ("tconv_a", "tconv_b", "nnconv_a", "bilinear_a", "pixshuffle_a")
HIDDEN_CHANNELS = 8
LEAKY_SLOPE = 0.2

# Interpolation kernels the networks are centred on: x2 bilinear, as a 1-D transposed-conv
# kernel (stride 2) and as the two output phases of a 3-tap kernel on the low-resolution grid.
_BILINEAR_TCONV = np.array([0.25, 0.75, 0.75, 0.25])
_BILINEAR_PHASES = np.array([[0.25, 0.75, 0.0], [0.0, 0.75, 0.25]])
_SMOOTH_3 = np.array([0.25, 0.5, 0.25])


@dataclass(frozen=True)
class RealModel:
    """Parameters of the natural-image model (dead leaves + 1/f texture + optics + sensor)."""

    leaves: int = 3000  # upper bound; drawing stops once every pixel is covered
    radius_min: float = 0.03  # fraction of the image side
    radius_max: float = 0.5
    radius_exponent: float = 3.0  # p(r) ~ r^-exponent: scale-invariant occlusion
    texture_amplitude: tuple[float, float] = (0.05, 0.35)
    texture_exponent: float = 1.0  # 1/f^exponent amplitude spectrum
    blur_sigma: tuple[float, float] = (1.2, 1.8)  # optics + demosaicing, in output pixels
    noise_sigma: tuple[float, float] = (0.005, 0.02)  # sensor noise before the blur, [0, 1] units
    supersample: int = 2


@dataclass
class ZooConfig:
    """`attribnet data zoo` (see ZooSettings); YAML: these keys or a `zoo:` section."""

    out: str = "zoo"
    image_size: int = 64
    per_source: int = 2000
    seed: int = 0
    sources: list[str] = field(default_factory=lambda: ["tconv_a", "tconv_b", "nnconv_a", "bilinear_a", "pixshuffle_a"])
    preset: str = "benchmark"  # or "easy": strong fingerprints, sharper reals (quick tests)
    strength: float = 0.0  # fingerprint strength; 0 = the preset's (0.01 benchmark, 0.06 easy)
    workers: int = 2
    implementation: str = "zoo"  # or "independent": the second zoo (zoo_independent.py), for evaluation


@dataclass(frozen=True)
class ZooSettings:
    """What a zoo is made of; written verbatim into its manifest."""

    image_size: int = 64
    per_source: int = 2000
    seed: int = 0
    sources: tuple[str, ...] = DEFAULT_SOURCES
    strength: float = 0.01  # std of the weights' deviation from the identity-like kernel
    # False: reals keep a white sensor-noise floor and fakes get the reals' full optical blur on
    # top of their own resampling, so reals carry fine detail that fakes lack. An easy detection
    # task for quick tests, not a benchmark.
    match_bandwidth: bool = True
    real: RealModel = field(default_factory=RealModel)


# Reals with less blur and a white noise floor: with `match_bandwidth=False` and a strong
# fingerprint (see quick_settings) a small CNN learns detection on a 32 px zoo in seconds.
EASY_REAL_MODEL = RealModel(blur_sigma=(0.9, 1.3), noise_sigma=(0.002, 0.008))


def quick_settings(**overrides) -> ZooSettings:
    """An easy zoo for fast tests and smoke runs (a 20-epoch detector reaches AUC ~0.97 at 32 px,
    40 images per source); benchmarks use the defaults of ZooSettings."""
    values = {"strength": 0.06, "match_bandwidth": False, "real": EASY_REAL_MODEL, **overrides}
    return ZooSettings(**values)


def stable_int(text: str) -> int:
    """A platform-independent integer for a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def parse_source(name: str) -> tuple[str, str]:
    """`tconv_a` -> ("tconv", "a"); raises on an unknown architecture."""
    arch, _, instance = name.partition("_")
    if arch not in ARCHITECTURES or not instance:
        raise ValueError(f"zoo source {name!r} must be <architecture>_<instance> with architecture in {ARCHITECTURES}")
    return arch, instance


# ----------------------------------------------------------------------------- the real-image model


def _power_law_noise(rng: np.random.Generator, size: int, exponent: float) -> tuple[np.ndarray, np.ndarray]:
    """Two independent Gaussian fields with a 1/f^exponent amplitude spectrum, unit std each
    (the real and imaginary parts of one complex inverse FFT)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    spectrum = rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))
    spectrum /= radius**exponent
    spectrum[0, 0] = 0.0
    fields = np.fft.ifft2(spectrum)
    return fields.real / (fields.real.std() + 1e-12), fields.imag / (fields.imag.std() + 1e-12)


def _dead_leaves(rng: np.random.Generator, size: int, model: RealModel) -> np.ndarray:
    """Occluding discs drawn front to back until the image is covered (the dead-leaves model),
    each a random colour modulated by 1/f texture.

    Leaves are first resolved into a label map (which leaf is frontmost at each pixel), then
    coloured in one vectorised pass.
    """
    textures = np.stack(_power_law_noise(rng, size, model.texture_exponent)).reshape(2, -1)
    # Inverse-CDF sampling of p(r) ~ r^-a on [r_min, r_max].
    a = model.radius_exponent - 1.0
    lo, hi = model.radius_min**-a, model.radius_max**-a
    radii = (lo + rng.random(model.leaves) * (hi - lo)) ** (-1.0 / a) * size
    centres = rng.random((model.leaves, 2)) * size
    colours = rng.uniform(0.05, 0.95, (model.leaves, 3))
    amplitudes = rng.uniform(*model.texture_amplitude, model.leaves)
    which = rng.integers(0, len(textures), model.leaves)
    labels = np.full((size, size), -1, dtype=np.int32)
    coords = np.arange(size) + 0.5
    remaining = size * size
    # Per-leaf while much is uncovered; the last few percent of pixels (where most of the tiny
    # late leaves land) are resolved in one vectorised pass.
    switch = size * size // 20
    leaf = 0
    for leaf, (radius, (cy, cx)) in enumerate(zip(radii.tolist(), centres.tolist())):
        if remaining <= switch:
            break
        y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, size)
        x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = coords[y0:y1, None] - cy
        dx = coords[None, x0:x1] - cx
        window = labels[y0:y1, x0:x1]
        mask = (dy * dy + dx * dx <= radius * radius) & (window < 0)
        count = int(np.count_nonzero(mask))
        if count:
            window[mask] = leaf
            remaining -= count
    flat = labels.ravel()
    pending = np.flatnonzero(flat < 0)
    py, px = pending // size + 0.5, pending % size + 0.5
    start = leaf
    while pending.size and start < model.leaves:
        stop = min(model.leaves, start + max(64, (1 << 18) // pending.size))
        inside = (py[:, None] - centres[None, start:stop, 0]) ** 2 + (px[:, None] - centres[None, start:stop, 1]) ** 2 <= radii[None, start:stop] ** 2
        hit = inside.any(axis=1)
        flat[pending[hit]] = start + inside[hit].argmax(axis=1)
        pending, py, px = pending[~hit], py[~hit], px[~hit]
        start = stop
    flat[pending] = model.leaves - 1
    texture = textures[which[flat], np.arange(size * size)]
    image = colours[flat] * (1.0 + amplitudes[flat] * texture)[:, None]
    return image.reshape(size, size, 3)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect", truncate=3.0)


def _area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = image.shape
    return image.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


# Blur variance (in output pixels squared) that x2 area downsampling (box of 2: 1/3) followed by
# bilinear x2 upsampling (triangle of half-width 2: 2/3) adds; a fake's scene gets that much less
# optical blur so that fakes and reals end with about the same bandwidth.
RESAMPLING_BLUR_VARIANCE = 1.0


def real_image(
    rng: np.random.Generator,
    size: int,
    model: RealModel = RealModel(),
    *,
    blur_variance_offset: float = 0.0,
    noise_after_blur: bool = False,
) -> np.ndarray:
    """One natural-model image, float HxWx3 in about [0, 1] (not yet quantised).

    `blur_variance_offset` lowers the optical blur's variance (kept >= 0.1 px^2): scenes meant for
    a generator use RESAMPLING_BLUR_VARIANCE so the generator's own resampling makes up the rest.
    Sensor noise normally goes before the blur (demosaicing and denoising shape it like the
    signal); `noise_after_blur` leaves a white noise floor instead.
    """
    image = _dead_leaves(rng, size * model.supersample, model)
    image = _area_downsample(image, model.supersample)
    noise = rng.standard_normal(image.shape) * rng.uniform(*model.noise_sigma)
    sigma = rng.uniform(*model.blur_sigma)
    sigma = float(np.sqrt(max(sigma * sigma - blur_variance_offset, 0.1)))
    if noise_after_blur:
        return _gaussian_blur(image, sigma) + noise
    return _gaussian_blur(image + noise, sigma)


# ----------------------------------------------------------------------------- the generators


def _conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """'same' 2-D correlation, edge-padded (as _tconv2): x HxWxCin, w KxKxCinxCout."""
    k = w.shape[0]
    pad = k // 2
    h, wd, _ = x.shape
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros((h, wd, w.shape[3]))
    for i in range(k):
        for j in range(k):
            out += padded[i : i + h, j : j + wd] @ w[i, j]
    return out if bias is None else out + bias


def _tconv2(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stride-2 transposed conv with a 4x4 kernel (edge-padded input), output 2H x 2W."""
    h, wd, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros((2 * (h + 2) + 2, 2 * (wd + 2) + 2, w.shape[3]))
    for a in range(4):
        for b in range(4):
            out[a : a + 2 * (h + 2) : 2, b : b + 2 * (wd + 2) : 2] += padded @ w[a, b]
    return out[3 : 3 + 2 * h, 3 : 3 + 2 * wd]


def _pixel_shuffle(x: np.ndarray, channels: int) -> np.ndarray:
    h, w, _ = x.shape
    return x.reshape(h, w, 2, 2, channels).transpose(0, 2, 1, 3, 4).reshape(2 * h, 2 * w, channels)


def _nearest2(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=0).repeat(2, axis=1)


def _leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, LEAKY_SLOPE * x)


def _identity_kernel(kernel_2d: np.ndarray, cin: int, cout: int) -> np.ndarray:
    """A KxKxCinxCout kernel that applies kernel_2d channel-wise to the first min(cin, cout) channels."""
    w = np.zeros(kernel_2d.shape + (cin, cout))
    for c in range(min(cin, cout)):
        w[:, :, c, c] = kernel_2d
    return w


@dataclass
class Generator:
    """One fixed upsampling network: `up` (arch-specific, 3 -> hidden channels, x2) then
    LeakyReLU and a 3x3 conv back to RGB. Weights = identity-like kernel + seeded deviation."""

    name: str
    architecture: str
    instance_seed: int
    strength: float
    weights: dict[str, np.ndarray]

    def __call__(self, low: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """The x2 image of a low-resolution one; `rng` draws modconv's per-image style and noise."""
        w = self.weights
        if self.architecture == "modconv":
            return self._modconv(low, rng if rng is not None else np.random.default_rng(0))
        if self.architecture == "tconv":
            hidden = _tconv2(low, w["up"]) + w["up_bias"]
        elif self.architecture == "nnconv":
            hidden = _conv(_nearest2(low), w["up"], w["up_bias"])
        elif self.architecture == "bilinear":
            hidden = _conv(_tconv2(low, _identity_kernel(np.outer(_BILINEAR_TCONV, _BILINEAR_TCONV), 3, 3)), w["up"], w["up_bias"])
        elif self.architecture == "pixshuffle":
            hidden = _pixel_shuffle(_conv(low, w["up"], w["up_bias"]), HIDDEN_CHANNELS)
        else:
            raise ValueError(f"unknown architecture {self.architecture!r}")
        return _conv(_leaky_relu(hidden), w["out"], w["out_bias"])

    def _modconv(self, low: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Bilinear x2, a modulated + demodulated 3x3 conv (style drawn per image), per-pixel noise
        injection scaled per channel, LeakyReLU, 3x3 conv to RGB: StyleGAN2's synthesis block."""
        w = self.weights
        upsampled = _tconv2(low, _identity_kernel(np.outer(_BILINEAR_TCONV, _BILINEAR_TCONV), 3, 3))
        style = 1.0 + rng.standard_normal(3) * self.strength * 4.0
        hidden = _modulated_conv(upsampled, w["up"], style) + w["up_bias"]
        hidden = hidden + rng.standard_normal(hidden.shape[:2] + (1,)) * w["noise"]
        return _conv(_leaky_relu(hidden), w["out"], w["out_bias"])

    def describe(self) -> dict:
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(self.weights[k]).tobytes() for k in sorted(self.weights)))
        return {
            "kind": "fake",
            "architecture": self.architecture,
            "instance_seed": self.instance_seed,
            "parameters": {
                "strength": self.strength,
                "hidden_channels": HIDDEN_CHANNELS,
                "leaky_slope": LEAKY_SLOPE,
                "weight_shapes": {k: list(v.shape) for k, v in sorted(self.weights.items())},
                "weights_sha256": digest.hexdigest(),
            },
        }


def _modulated_conv(x: np.ndarray, w: np.ndarray, style: np.ndarray) -> np.ndarray:
    """StyleGAN2's modulated conv: input channels scaled by a per-image style, then each output
    channel demodulated back to the base kernel's norm (a style of 1 leaves the kernel as is)."""
    modulated = w * style[None, None, :, None]
    norm = np.sqrt((w**2).sum(axis=(0, 1, 2)) + 1e-8)
    return _conv(x, modulated / np.sqrt((modulated**2).sum(axis=(0, 1, 2)) + 1e-8) * norm)


def _up_base(architecture: str) -> np.ndarray:
    """The identity-like (bilinear-equivalent) first-layer kernel of each architecture."""
    if architecture == "tconv":
        return _identity_kernel(np.outer(_BILINEAR_TCONV, _BILINEAR_TCONV), 3, HIDDEN_CHANNELS)
    if architecture == "nnconv":
        return _identity_kernel(np.outer(_SMOOTH_3, _SMOOTH_3), 3, HIDDEN_CHANNELS)
    if architecture in ("bilinear", "modconv"):
        delta = np.zeros((3, 3))
        delta[1, 1] = 1.0
        return _identity_kernel(delta, 3, HIDDEN_CHANNELS)
    if architecture == "pixshuffle":
        # Output channel (p, q, c) after the shuffle is phase (p, q) of colour c.
        w = np.zeros((3, 3, 3, 4 * HIDDEN_CHANNELS))
        for p in range(2):
            for q in range(2):
                for c in range(3):
                    w[:, :, c, (p * 2 + q) * HIDDEN_CHANNELS + c] = np.outer(_BILINEAR_PHASES[p], _BILINEAR_PHASES[q])
        return w
    raise ValueError(f"unknown architecture {architecture!r}")


def make_generator(name: str, zoo_seed: int, strength: float) -> Generator:
    """The fixed network behind a source name; its weights depend only on (zoo seed, name)."""
    architecture, _ = parse_source(name)
    instance_seed = stable_int(f"{zoo_seed}:{name}")
    rng = np.random.default_rng(instance_seed)
    up = _up_base(architecture)
    # Deviation per tap relative to a typical interpolation tap (~0.25), for every architecture.
    up = up + rng.standard_normal(up.shape) * strength * 0.25
    delta = np.zeros((3, 3))
    delta[1, 1] = 1.0
    out = _identity_kernel(delta, HIDDEN_CHANNELS, 3)
    out = out + rng.standard_normal(out.shape) * strength * np.sqrt(1.0 / (9 * HIDDEN_CHANNELS))
    weights = {
        "up": up,
        "up_bias": rng.standard_normal(up.shape[3]) * strength * 0.1,
        "out": out,
        "out_bias": rng.standard_normal(3) * strength * 0.1,
    }
    if architecture == "modconv":  # per-channel noise strength, in [0, 1] image units
        weights["noise"] = np.abs(rng.standard_normal(up.shape[3])) * strength
    return Generator(name, architecture, instance_seed, strength, weights)


# ----------------------------------------------------------------------------- writing a zoo


def _quantise(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def render(settings: ZooSettings, source: str, index: int, generator: Generator | None = None) -> np.ndarray:
    """Image `index` of `source` as uint8 HxWx3: a pure function of (settings, source, index)."""
    size = settings.image_size
    if source == REAL_SOURCE:
        rng = np.random.default_rng([settings.seed, stable_int(REAL_SOURCE), index])
        return _quantise(real_image(rng, size, settings.real, noise_after_blur=not settings.match_bandwidth))
    generator = generator or make_generator(source, settings.seed, settings.strength)
    # The underlying scene is drawn from a stream of its own per source, so no fake shares a
    # scene with a real image or with another generator's image.
    rng = np.random.default_rng([settings.seed, stable_int(source), index, 1])
    offset = RESAMPLING_BLUR_VARIANCE if settings.match_bandwidth else 0.0
    scene = real_image(rng, size, settings.real, blur_variance_offset=offset)
    low = _area_downsample(scene, 2)
    return _quantise(generator(low, rng))


def _write_chunk(job: tuple[ZooSettings, str, str, int, int]) -> int:
    settings, out, source, start, stop = job
    generator = None if source == REAL_SOURCE else make_generator(source, settings.seed, settings.strength)
    folder = Path(out) / source
    for index in range(start, stop):
        Image.fromarray(render(settings, source, index, generator)).save(folder / f"{index:05d}.png", optimize=False)
    return stop - start


def manifest_for(settings: ZooSettings) -> dict:
    sources = {REAL_SOURCE: {"kind": "real", "architecture": REAL_SOURCE, "instance_seed": settings.seed, "parameters": asdict(settings.real)}}
    for name in settings.sources:
        sources[name] = make_generator(name, settings.seed, settings.strength).describe()
    return {
        "format": ZOO_FORMAT,
        "image_size": settings.image_size,
        "per_source": settings.per_source,
        "seed": settings.seed,
        "strength": settings.strength,
        "match_bandwidth": settings.match_bandwidth,
        "real_sources": [REAL_SOURCE],
        "sources": sources,
    }


def write_zoo(
    out: str | Path,
    settings: ZooSettings = ZooSettings(),
    *,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Writes `out/<source>/NNNNN.png` for `real` and every generator, plus `out/manifest.json`.

    Refuses a non-empty `out` that is not a zoo of the same settings (never mixes two zoos);
    the same settings again resume or re-check an existing zoo (same bytes).
    """
    if settings.image_size < 8 or settings.image_size % 2:
        raise ValueError(f"zoo image size must be an even number >= 8, got {settings.image_size}")
    if settings.per_source < 1:
        raise ValueError(f"per-source count must be >= 1, got {settings.per_source}")
    if len(set(settings.sources)) != len(settings.sources) or REAL_SOURCE in settings.sources:
        raise ValueError(f"zoo sources must be distinct generator names, got {list(settings.sources)}")
    for name in settings.sources:
        parse_source(name)
    out = Path(out)
    manifest = manifest_for(settings)
    if out.exists() and any(out.iterdir()):
        try:
            existing = {k: v for k, v in read_manifest(out).items() if k != "complete"}
        except (FileNotFoundError, ValueError):
            existing = None
        if existing != json.loads(json.dumps(manifest)):
            raise FileExistsError(f"{out} is not empty and holds no zoo with these settings; choose an empty folder")
    names = [REAL_SOURCE, *settings.sources]
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    # Written first, marked incomplete: an interrupted run can be resumed with the same settings
    # (images are pure functions of them) and readers can tell a partial zoo from a finished one.
    write_manifest(out, {**manifest, "complete": False})
    chunk = max(1, min(250, settings.per_source // max(workers, 1) or 1))
    jobs = [(settings, str(out), name, start, min(start + chunk, settings.per_source)) for name in names for start in range(0, settings.per_source, chunk)]
    total, done = len(names) * settings.per_source, 0
    started = time.monotonic()
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may hold threads (TensorFlow, gRPC) that fork would break.
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_tune_worker_malloc) as pool:
            for count in pool.imap_unordered(_write_chunk, jobs):
                done += count
                if progress:
                    progress(done, total)
    else:
        for job in jobs:
            done += _write_chunk(job)
            if progress:
                progress(done, total)
    write_manifest(out, {**manifest, "complete": True})
    log.info("wrote zoo of %d images (%d sources) to %s in %.1fs", total, len(names), out, time.monotonic() - started)
    return manifest


def _tune_worker_malloc() -> None:
    """In a worker process we own: keep glibc from mmapping/trimming each ~200-400 KB temporary
    array (measured: ~1 ms of system time per image, 15% of the zoo's CPU time). No-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError, TypeError):
        pass


def write_manifest(out: Path, manifest: dict) -> None:
    """Written to a temporary file and renamed: a run killed mid-write leaves the old manifest."""
    temporary = out / f".{MANIFEST_FILE}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, out / MANIFEST_FILE)


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: not a zoo folder (attribnet data zoo)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc})") from None


def zoo_sources(manifest: dict) -> Sequence[str]:
    return sorted(manifest["sources"])


def zoo_data_config(root: str | Path, **overrides) -> DataConfig:
    """A DataConfig for a written zoo (or upscalers dataset): its size and real source come from the manifest."""
    manifest = read_manifest(root)
    if manifest.get("complete") is False:
        command = manifest.get("dataset", "zoo")
        raise ValueError(f"{root}: the dataset is incomplete (its writing was interrupted); run attribnet data {command} again")
    values = {"root": str(root), "real_sources": list(manifest["real_sources"]), "image_size": manifest["image_size"]}
    values.update(overrides)
    return DataConfig(**values)


PRESETS = ("benchmark", "easy")


def settings_from_config(config: ZooConfig) -> ZooSettings:
    """ZooConfig (YAML/CLI) -> ZooSettings: the preset, then size, count, seed, sources, strength."""
    if config.preset not in PRESETS:
        raise ValueError(f"zoo.preset must be one of {PRESETS}, got {config.preset!r}")
    if config.strength < 0:
        raise ValueError(f"zoo.strength must be >= 0, got {config.strength}")
    values = {"image_size": config.image_size, "per_source": config.per_source, "seed": config.seed, "sources": tuple(config.sources)}
    if config.strength > 0:
        values["strength"] = config.strength
    return quick_settings(**values) if config.preset == "easy" else ZooSettings(**values)

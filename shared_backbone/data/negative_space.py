"""The space of random upsampling networks a node's negatives are rendered by.

Written from first principles and sharing no code with any benchmark generator: a node that
learns "not mine" from renders of the benchmark's own generator code would be judged on a
question no real node is asked. The space is broad on purpose (POSE, CVPR 2023, simulates the
open space with randomly initialised networks): per network a family, 1-2 stages of x2
upsampling, a width, kernel sizes, an activation, optional instance-norm-like normalisation,
noise injection, a skip path and light JPEG re-encoding.

Every network starts exactly at an interpolation kernel (linear, Keys cubic or Lanczos-2): its
lift embeds RGB into `width` hidden channels as antisymmetric pairs (z, -z) and its projection
undoes that, which is exact for every activation used since act(z) - act(-z) = gain * z. A random
deviation of random strength then moves every weight off that point, so the fakes are about as
faithful as bicubic upsampling and the fingerprint is weak, like real generators'. numpy/scipy/Pillow
only: a node renders a thousand negatives in seconds on a CPU.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

FAMILIES = ("tconv", "nnconv", "bilinear", "pixshuffle", "modconv", "classical")
RESAMPLER_FAMILY = "classical"  # a classical resampler, not a generative model: its images are no generator's
ACTIVATIONS = ("relu", "leaky", "softplus", "none")
INTERPOLATORS = ("linear", "cubic", "lanczos2")
RESAMPLERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
              "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
KERNEL_SIZES = {"tconv": (3, 4, 5, 6), "nnconv": (3, 5), "bilinear": (1, 3), "pixshuffle": (3, 5), "modconv": (3, 4)}
WIDTHS = (3, 4, 6, 8)  # antisymmetric pairs: 6-16 hidden channels
P_TWO_STAGES, P_NORM, P_NOISE, P_SKIP, P_REENCODE, P_UNSHARP = 0.35, 0.3, 0.3, 0.3, 0.25, 0.5
BATCH = 32  # images per array operation: bounds memory at 128 px and 16 channels


def _interpolator(name: str):
    """The continuous 1-D kernel phi(t) (t in low-resolution pixels) a network starts from."""
    def linear(t):
        return np.maximum(1 - np.abs(t), 0)

    def cubic(t, a=-0.5):
        t = np.abs(t)
        return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))

    def lanczos2(t):
        return np.where(np.abs(t) < 2, np.sinc(t) * np.sinc(t / 2), 0.0)

    return {"linear": linear, "cubic": cubic, "lanczos2": lanczos2}[name]


def _normalised(taps: np.ndarray) -> np.ndarray:
    return taps / taps.sum() if abs(taps.sum()) > 1e-9 else np.full_like(taps, 1 / taps.size)


def tconv_taps(phi, size: int) -> np.ndarray:
    """High-resolution kernel of a stride-2 transposed conv (zero insertion, then conv) equal to
    interpolation by phi: even sizes sit between low-res pixels, odd sizes on them."""
    align = 0.5 if size % 2 == 0 else 0.0
    offsets = np.arange(size) - size // 2  # tap i reads zero-inserted input i - size // 2 (see `conv`)
    taps = phi((-offsets - align) / 2.0)
    even, odd = taps[(offsets % 2) == 0], taps[(offsets % 2) == 1]  # one phase of outputs each
    taps[(offsets % 2) == 0], taps[(offsets % 2) == 1] = _normalised(even), _normalised(odd)
    return taps


def phase_taps(phi, phase: int, size: int) -> np.ndarray:
    """Low-resolution taps of output phase 0/1 (sub-pixel conv): pixel 2m + phase lies at m + (phase - 0.5) / 2."""
    offsets = np.arange(size) - size // 2
    return _normalised(phi((phase - 0.5) / 2.0 - offsets))


def conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'Same' convolution (correlation) of (N, H, W, Cin) by (k, k, Cin, Cout), reflect padding: one
    matrix product over k x k patches (tap i reads input i - k // 2)."""
    k = w.shape[0]
    before, after = k // 2, (k - 1) // 2
    padded = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), mode="reflect" if k <= x.shape[1] else "edge")
    patches = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))  # (N, H, W, Cin, k, k)
    return np.tensordot(patches, w.transpose(2, 0, 1, 3), axes=([3, 4, 5], [0, 1, 2])).astype(np.float32)


def upsampled_conv(x: np.ndarray, w: np.ndarray, upsample) -> np.ndarray:
    """`conv(upsample(x), w)` with the border taken from the low-resolution image (mirrored there
    before upsampling), so zero insertion does not leave dark or doubled edges."""
    margin = (w.shape[0] + 3) // 4
    padded = np.pad(x, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="symmetric")
    out = conv(upsample(padded), w)
    return out[:, 2 * margin:out.shape[1] - 2 * margin, 2 * margin:out.shape[2] - 2 * margin]


def zero_insert(x: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), dtype=np.float32)
    out[:, ::2, ::2] = x
    return out


def nearest(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=1).repeat(2, axis=2)


def _linear_double(x: np.ndarray, axis: int) -> np.ndarray:
    """x2 linear interpolation along `axis`, half-pixel aligned, edges repeated: (1/4, 3/4) and (3/4, 1/4)."""
    n = x.shape[axis]
    before = np.take(x, np.r_[0, np.arange(n - 1)], axis=axis)
    after = np.take(x, np.r_[np.arange(1, n), n - 1], axis=axis)
    doubled = np.stack([0.25 * before + 0.75 * x, 0.75 * x + 0.25 * after], axis=axis + 1)
    return doubled.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1:])


def bilinear(x: np.ndarray) -> np.ndarray:
    """x2 bilinear interpolation of (N, H, W, C)."""
    return _linear_double(_linear_double(x, 1), 2)


def depth_to_space(x: np.ndarray) -> np.ndarray:
    """(N, H, W, 4C) -> (N, 2H, 2W, C): channel block (py, px) becomes output phase (py, px)."""
    n, h, w, c4 = x.shape
    c = c4 // 4
    return x.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


def activate(z: np.ndarray, name: str, slope: float) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky":
        return np.where(z > 0, z, slope * z)
    if name == "softplus":
        return np.logaddexp(z, 0)
    return z


def activation_gain(name: str, slope: float) -> float:
    """act(z) - act(-z) = gain * z for every activation here (softplus: log((1 + e^z) / (1 + e^-z)) = z)."""
    return {"relu": 1.0, "leaky": 1.0 + slope, "softplus": 1.0, "none": 2.0}[name]


@dataclass(frozen=True)
class Stage:
    """One x2 stage of a learned-upsampler family: lift to hidden channels (the family's way of
    upsampling), optional normalisation and noise, activation, projection back to RGB, skip mix."""

    family: str
    lift: np.ndarray  # (k, k, 3, C); pixshuffle: (k, k, 3, 4C) at low resolution
    lift_bias: np.ndarray  # (C,)
    project: np.ndarray  # (C, 3)
    project_bias: np.ndarray  # (3,)
    activation: str
    slope: float  # leaky relu's negative slope
    norm: np.ndarray | None  # (2, C): deviation of the gain and shift that restore instance statistics
    noise: np.ndarray | None  # (C,): per-channel weight of injected per-pixel noise
    skip: float  # weight of an interpolated copy of the stage input mixed into its output (0 = none)
    style_spread: float  # modconv: spread of the per-image style that modulates the input channels


@dataclass(frozen=True)
class ClassicalStage:
    """One x2 stage of a classical resampler, optionally unsharp-masked (radius px, amount)."""

    resampler: str
    unsharp: tuple[float, float] | None


@dataclass(frozen=True)
class Network:
    """A random upsampler: the image is reduced by `factor` (area) by the caller, then every stage
    doubles it; `reencode` > 0 is the quality of a final light JPEG re-encoding."""

    name: str
    family: str
    stages: tuple[Stage | ClassicalStage, ...]
    reencode: int

    @property
    def factor(self) -> int:
        return 2 ** len(self.stages)

    def __call__(self, low: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, h, w, 3) floats in [0, 1] -> (N, h * factor, w * factor, 3); `rng` draws styles and noise."""
        x = low.astype(np.float32)
        for stage in self.stages:
            x = classical_stage(x, stage) if isinstance(stage, ClassicalStage) else learned_stage(x, stage, rng)
        return x


def _lift_init(family: str, phi, size: int, embed: np.ndarray) -> np.ndarray:
    """The lift's weights at the interpolation point, for `embed` (3, C)."""
    if family in ("tconv", "modconv"):
        taps = tconv_taps(phi, size)
        return np.einsum("i,j,cd->ijcd", taps, taps, embed)
    if family == "pixshuffle":
        blocks = [np.einsum("i,j,cd->ijcd", phase_taps(phi, py, size), phase_taps(phi, px, size), embed)
                  for py in (0, 1) for px in (0, 1)]
        return np.concatenate(blocks, axis=3)
    if family == "nnconv":
        taps = _normalised(np.array([float(math.comb(size - 1, i)) for i in range(size)]))  # binomial smoothing
        return np.einsum("i,j,cd->ijcd", taps, taps, embed)
    delta = np.zeros(size)
    delta[size // 2] = 1.0
    return np.einsum("i,j,cd->ijcd", delta, delta, embed)  # bilinear: the interpolation happens before the conv


def _deviate(weights: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """`weights` plus Gaussian deviation of `strength` times their RMS (scale-free across widths and kernels)."""
    rms = float(np.sqrt(np.mean(weights**2))) or 1.0
    return (weights + strength * rms * rng.standard_normal(weights.shape)).astype(np.float32)


def draw_stage(family: str, strength: float, rng: np.random.Generator) -> Stage:
    """A learned x2 stage of `family` at `strength`: exact interpolation plus random deviation."""
    pairs = int(rng.choice(WIDTHS))
    basis = np.linalg.qr(rng.standard_normal((pairs, 3)))[0]  # (pairs, 3), orthonormal columns
    embed = np.concatenate([basis.T, -basis.T], axis=1)  # RGB -> antisymmetric pairs (z, -z)
    activation = str(rng.choice(ACTIVATIONS))
    slope = float(rng.uniform(0.1, 0.3))
    project = np.concatenate([basis, -basis], axis=0) / activation_gain(activation, slope)
    lift = _lift_init(family, _interpolator(str(rng.choice(INTERPOLATORS))), int(rng.choice(KERNEL_SIZES[family])), embed)
    width = 2 * pairs
    return Stage(
        family=family, lift=_deviate(lift, strength, rng),
        lift_bias=(strength * 0.25 * rng.standard_normal(width)).astype(np.float32),
        project=_deviate(project, strength, rng),
        project_bias=(strength * 0.1 * rng.standard_normal(3)).astype(np.float32),
        activation=activation, slope=slope,
        norm=(strength * rng.standard_normal((2, width))).astype(np.float32) if rng.random() < P_NORM else None,
        noise=(strength * 0.5 * rng.standard_normal(width)).astype(np.float32) if rng.random() < P_NOISE else None,
        skip=float(rng.uniform(0.2, 0.8)) if rng.random() < P_SKIP else 0.0,
        style_spread=float(strength * rng.uniform(1.0, 4.0)) if family == "modconv" else 0.0,
    )


def draw_classical_stage(rng: np.random.Generator) -> ClassicalStage:
    """A classical x2 stage: no weights to deviate, so its variety is the resampler and the sharpening."""
    unsharp = (float(rng.uniform(0.5, 1.5)), float(rng.uniform(0.2, 1.0))) if rng.random() < P_UNSHARP else None
    return ClassicalStage(resampler=str(rng.choice(list(RESAMPLERS))), unsharp=unsharp)


def draw_network(family: str, strength: float, rng: np.random.Generator, name: str = "") -> Network:
    """One random network of `family` (see FAMILIES); `strength` scales the deviation from interpolation."""
    if family not in FAMILIES:
        raise ValueError(f"negative space: unknown family {family!r} (known: {', '.join(FAMILIES)})")
    depth = 2 if rng.random() < P_TWO_STAGES else 1
    if family == "classical":
        stages = tuple(draw_classical_stage(rng) for _ in range(depth))
    else:
        stages = tuple(draw_stage(family, strength, rng) for _ in range(depth))
    reencode = int(rng.integers(85, 99)) if rng.random() < P_REENCODE else 0
    return Network(name=name or family, family=family, stages=stages, reencode=reencode)


def _lifted(x: np.ndarray, stage: Stage, rng: np.random.Generator) -> np.ndarray:
    """The stage's hidden channels at twice the resolution: the family's upsampling."""
    if stage.family == "pixshuffle":
        return depth_to_space(conv(x, stage.lift))
    if stage.family == "modconv":  # modulation scales the input channels per image, demodulation restores each output's norm
        style = (1.0 + stage.style_spread * rng.standard_normal((x.shape[0], 1, 1, 3))).astype(np.float32)
        norm = np.sqrt((stage.lift**2).sum(axis=(0, 1, 2)))
        modulated = np.sqrt(np.einsum("nc,ijcd->nd", style[:, 0, 0] ** 2, stage.lift**2))
        return upsampled_conv(x * style, stage.lift, zero_insert) * (norm / np.maximum(modulated, 1e-8))[:, None, None, :]
    return upsampled_conv(x, stage.lift, {"tconv": zero_insert, "nnconv": nearest, "bilinear": bilinear}[stage.family])


def learned_stage(x: np.ndarray, stage: Stage, rng: np.random.Generator) -> np.ndarray:
    """One learned x2 stage on (N, h, w, 3) in [0, 1], in chunks of BATCH images."""
    chunks = []
    for start in range(0, x.shape[0], BATCH):
        part = x[start:start + BATCH]
        z = _lifted(part - 0.5, stage, rng) + stage.lift_bias
        if stage.norm is not None:  # instance-norm-like: normalise each channel per image, restore through a perturbed affine
            mean, std = z.mean(axis=(1, 2), keepdims=True), z.std(axis=(1, 2), keepdims=True) + 1e-5
            z = (z - mean) / std * (std * (1 + stage.norm[0])) + mean + stage.norm[1] * std
        if stage.noise is not None:
            z = z + rng.standard_normal((*z.shape[:3], 1)).astype(np.float32) * stage.noise
        out = activate(z, stage.activation, stage.slope) @ stage.project + stage.project_bias + 0.5
        if stage.skip:
            out = stage.skip * bilinear(part) + (1 - stage.skip) * out
        chunks.append(out.astype(np.float32))
    return np.concatenate(chunks)


def _unsharp(image: np.ndarray, radius: float, amount: float) -> np.ndarray:
    return image + amount * (image - ndimage.gaussian_filter(image, sigma=(radius, radius, 0), mode="reflect"))


def classical_stage(x: np.ndarray, stage: ClassicalStage) -> np.ndarray:
    """x2 by a Pillow resampler, channel by channel in float ('F') mode, then the optional unsharp mask."""
    n, h, w, c = x.shape
    out = np.empty((n, 2 * h, 2 * w, c), dtype=np.float32)
    for i in range(n):
        for ch in range(c):
            plane = Image.fromarray(np.ascontiguousarray(x[i, :, :, ch], dtype=np.float32))
            out[i, :, :, ch] = np.asarray(plane.resize((2 * w, 2 * h), RESAMPLERS[stage.resampler]))
        if stage.unsharp:
            out[i] = _unsharp(out[i], *stage.unsharp)
    return out


def reencode(image: np.ndarray, quality: int) -> np.ndarray:
    """A uint8 RGB image through one JPEG round trip at `quality` (light re-encoding)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))

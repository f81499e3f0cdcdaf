"""The second zoo's generators: x2 upsampling networks built from Keras layers.

Written apart from `zoo.py` (it imports nothing from it) so that a benchmark on this zoo measures
how far a model's fingerprints transfer to code it never shared. Every family starts from an
interpolation that is nearly faithful, Keys cubic (a = -0.5) where the layer allows it, and every
weight gets a seeded Gaussian deviation of std `strength`: a fake is about as faithful as bicubic
upsampling and its fingerprint (uneven polyphase gains, energy near the low image's Nyquist) is weak.

Network shape, shared by all families: reflect-pad the half-size input, upsample to 6 hidden
channels that hold +x and -x (so LeakyReLU(0.2) keeps the identity path: lrelu(x) - lrelu(-x) =
1.2 x, and the deviations make it mildly non-linear), a 3x3 output conv, then crop the padding.
The family decides the upsampling layer:

- tconv: Conv2DTranspose, kernel 8, stride 2 (the cubic kernel's eight taps);
- nnconv: UpSampling2D(nearest) + Conv2D 5x5 (a cubic-like smoothing of the repeated pixels);
- bilinear: UpSampling2D(bilinear) + Conv2D 3x3 (a mild sharpening);
- pixshuffle: Conv2D 5x5 to 4 phases x 6 channels + depth_to_space (cubic phase kernels);
- modconv: StyleGAN2-like: zero-insertion transposed conv with the [1, 3, 3, 1] blur, then a
  modulated, demodulated 3x3 conv driven by a per-image style, plus per-pixel noise injection.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

FAMILIES = ("tconv", "nnconv", "bilinear", "pixshuffle", "modconv")
HIDDEN = 6  # +RGB and -RGB
PAD = 3  # low-resolution pixels reflected on each side, cropped (x2) after upsampling
LEAK = 0.2
STYLE_SPREAD = 0.25  # std of a modconv image's per-channel style around 1
NOISE_GAIN = 0.01  # std of the per-channel gain of modconv's injected noise (in [-1, 1] units)


def keys_cubic(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (what bicubic resizers use)."""
    d = np.abs(np.asarray(distance, dtype=np.float64))
    near = 1.5 * d**3 - 2.5 * d**2 + 1
    far = -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _tconv_taps() -> np.ndarray:
    """Eight taps: an input pixel's weight on the outputs 0.25, 0.75, 1.25, 1.75 px either side."""
    return keys_cubic(np.array([-1.75, -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75]))


def _phase_taps(offset: float) -> np.ndarray:
    """Five taps on low pixels -2..2 for an output `offset` low pixels from the centre pixel."""
    return keys_cubic(np.arange(-2, 3) - offset)


NNCONV_TAPS = np.array([-0.07, 0.27, 0.6, 0.27, -0.07])  # on repeated pixels: close to cubic
SHARPEN_TAPS = np.array([-0.12, 1.24, -0.12])  # undoes part of bilinear's softness
BLUR_TAPS = np.array([1.0, 3.0, 3.0, 1.0]) / 4  # StyleGAN2's upsampling filter, gain 2 per axis


def _signed_channels(spatial: np.ndarray, layout: str) -> np.ndarray:
    """A kernel that maps RGB (3) to +RGB, -RGB (6) with `spatial` per channel.

    layout "conv": (kh, kw, 3, 6) as Conv2D wants; "tconv": (kh, kw, 6, 3) as Conv2DTranspose.
    """
    kernel = np.zeros((*spatial.shape, 3, HIDDEN))
    for c in range(3):
        kernel[:, :, c, c] = spatial
        kernel[:, :, c, c + 3] = -spatial
    return kernel if layout == "conv" else kernel.transpose(0, 1, 3, 2)


def _output_kernel() -> np.ndarray:
    """3x3 conv from the 6 hidden channels back to RGB that undoes the 1.2 gain of the +/- pair."""
    kernel = np.zeros((3, 3, HIDDEN, 3))
    for c in range(3):
        kernel[1, 1, c, c] = 1 / (1 + LEAK)
        kernel[1, 1, c + 3, c] = -1 / (1 + LEAK)
    return kernel


def _pixshuffle_kernel() -> np.ndarray:
    """(5, 5, 3, 4 * 6): output channel (2 * dy + dx) * 6 + h is phase (dy, dx) of hidden channel h."""
    phases = {0: _phase_taps(-0.25), 1: _phase_taps(0.25)}
    kernel = np.zeros((5, 5, 3, 4 * HIDDEN))
    for dy in (0, 1):
        for dx in (0, 1):
            block = _signed_channels(np.outer(phases[dy], phases[dx]), "conv")
            start = (2 * dy + dx) * HIDDEN
            kernel[:, :, :, start : start + HIDDEN] = block
    return kernel


def base_kernels(family: str) -> dict[str, np.ndarray]:
    """The family's deviation-free kernels by layer name: the interpolation it starts from."""
    if family == "tconv":
        up = _signed_channels(np.outer(_tconv_taps(), _tconv_taps()), "tconv")
    elif family == "nnconv":
        up = _signed_channels(np.outer(NNCONV_TAPS, NNCONV_TAPS), "conv")
    elif family == "bilinear":
        up = _signed_channels(np.outer(SHARPEN_TAPS, SHARPEN_TAPS), "conv")
    elif family == "pixshuffle":
        up = _pixshuffle_kernel()
    elif family == "modconv":
        blur = np.zeros((4, 4, 3, 3))
        for c in range(3):
            blur[:, :, c, c] = np.outer(BLUR_TAPS, BLUR_TAPS)
        delta = np.zeros((3, 3))
        delta[1, 1] = 1.0
        return {"upsample": blur, "modulated": _signed_channels(delta, "conv"), "to_rgb": _output_kernel()}
    else:
        raise ValueError(f"unknown generator family {family!r}; expected one of {FAMILIES}")
    return {"upsample": up, "to_rgb": _output_kernel()}


class ReflectPad(keras.layers.Layer):
    """Reflects `pad` pixels on each side, so zero padding leaves no border fingerprint."""

    def __init__(self, pad: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x):
        p = self.pad
        return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")


class DepthToSpace(keras.layers.Layer):
    """Pixel shuffle: channel block (2 * dy + dx) becomes output phase (dy, dx)."""

    def call(self, x):
        return tf.nn.depth_to_space(x, 2)


class ModulatedConv2D(keras.layers.Layer):
    """StyleGAN2's modulated conv (inputs scaled by a per-image style, outputs demodulated), rescaled
    by the base kernel's per-output norm so that the identity-like kernel keeps unit gain."""

    def __init__(self, filters: int, kernel_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size

    def build(self, input_shape) -> None:
        channels = input_shape[0][-1]
        k = self.kernel_size
        self.kernel = self.add_weight(shape=(k, k, channels, self.filters), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
        self.base_norm = self.add_weight(shape=(self.filters,), initializer="ones", name="base_norm", trainable=False)

    def call(self, inputs):
        x, style = inputs
        y = keras.ops.conv(x * style[:, None, None, :], self.kernel, padding="same")
        energy = keras.ops.sum(keras.ops.square(self.kernel), axis=(0, 1))  # (in, out)
        demodulate = keras.ops.rsqrt(keras.ops.matmul(keras.ops.square(style), energy) + 1e-8)
        return y * (demodulate * self.base_norm)[:, None, None, :] + self.bias


def _upsampling_layers(family: str, x, style=None, noise=None):
    """The family's part of the network: half-size RGB in, full-size hidden channels out."""
    if family == "tconv":
        return keras.layers.Conv2DTranspose(HIDDEN, 8, strides=2, padding="same", name="upsample")(x)
    if family == "nnconv":
        x = keras.layers.UpSampling2D(2, interpolation="nearest")(x)
        return keras.layers.Conv2D(HIDDEN, 5, padding="same", name="upsample")(x)
    if family == "bilinear":
        x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
        return keras.layers.Conv2D(HIDDEN, 3, padding="same", name="upsample")(x)
    if family == "pixshuffle":
        x = keras.layers.Conv2D(4 * HIDDEN, 5, padding="same", name="upsample")(x)
        return DepthToSpace()(x)
    x = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same", name="upsample")(x)
    x = ModulatedConv2D(HIDDEN, 3, name="modulated")([x, style])
    return keras.layers.Add()([x, keras.layers.Conv2D(HIDDEN, 1, use_bias=False, name="noise_gain")(noise)])


@dataclass
class Generator:
    """One source's fixed network; `needs_style` means it also takes a style and a noise map per image."""

    name: str
    family: str
    instance_seed: int
    strength: float
    model: keras.Model
    weights_sha256: str

    @property
    def needs_style(self) -> bool:
        return self.family == "modconv"

    def describe(self) -> dict:
        layers = {w.path: list(w.shape) for w in self.model.weights}
        return {
            "kind": "fake",
            "architecture": self.family,
            "instance_seed": self.instance_seed,
            "parameters": {"strength": self.strength, "weights_sha256": self.weights_sha256, "weight_shapes": layers,
                           "keras_layers": [type(layer).__name__ for layer in self.model.layers]},
        }


def instance_seed(zoo_seed: int, name: str) -> int:
    """A process-independent seed for one source of one zoo."""
    return int.from_bytes(hashlib.blake2b(f"independent/{zoo_seed}/{name}".encode(), digest_size=8).digest(), "little")


def _set_weights(model: keras.Model, family: str, rng: np.random.Generator, strength: float) -> str:
    """Base kernels plus N(0, strength) deviations (biases: strength / 4); returns their digest."""
    digest = hashlib.sha256()
    for name, base in base_kernels(family).items():
        layer = model.get_layer(name)
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if weight.name == "kernel":
                value = base.reshape(shape) + rng.normal(0.0, strength, shape)
            elif weight.name == "bias":
                value = rng.normal(0.0, strength / 4, shape)
            else:  # base_norm: the deviation-free kernel's norm per output channel
                value = np.sqrt(np.sum(base**2, axis=(0, 1, 2)))
            values.append(value.astype(np.float32))
            digest.update(values[-1].tobytes())
        layer.set_weights(values)
    if family == "modconv":
        gains = (rng.normal(0.0, NOISE_GAIN, (1, 1, 1, HIDDEN))).astype(np.float32)
        model.get_layer("noise_gain").set_weights([gains])
        digest.update(gains.tobytes())
    return digest.hexdigest()


def make_generator(name: str, zoo_seed: int, strength: float) -> Generator:
    """The fixed network of source `name` (FAMILY_INSTANCE) in the zoo of seed `zoo_seed`."""
    family, _, instance = name.partition("_")
    if family not in FAMILIES or not instance:
        raise ValueError(f"source {name!r} must be FAMILY_INSTANCE with FAMILY in {FAMILIES}")
    low = keras.Input(shape=(None, None, 3), name="low")
    inputs = [low]
    style = noise = None
    if family == "modconv":
        style = keras.Input(shape=(3,), name="style")
        noise = keras.Input(shape=(None, None, 1), name="noise")
        inputs += [style, noise]
    x = _upsampling_layers(family, ReflectPad(PAD)(low), style, noise)
    x = keras.layers.LeakyReLU(LEAK)(x)
    x = keras.layers.Conv2D(3, 3, padding="same", name="to_rgb")(x)
    x = keras.layers.Cropping2D(2 * PAD)(x)
    model = keras.Model(inputs, x, name=f"independent_{name}")
    seed = instance_seed(zoo_seed, name)
    digest = _set_weights(model, family, np.random.default_rng(seed), strength)
    return Generator(name, family, seed, strength, model, digest)


def style_inputs(rng: np.random.Generator, low_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's modconv style (3,) and noise map, drawn from that image's own rng."""
    side = 2 * (low_size + 2 * PAD)
    style = 1 + rng.normal(0.0, STYLE_SPREAD, 3)
    return style.astype(np.float32), rng.standard_normal((side, side, 1)).astype(np.float32)


def upsample(generator: Generator, low: np.ndarray, styles: np.ndarray | None = None, noise: np.ndarray | None = None) -> np.ndarray:
    """Runs the network on a batch of half-size images in [-1, 1] (N, h, w, 3) -> (N, 2h, 2w, 3).

    modconv also takes each image's style (N, 3) and noise map (N, H', W', 1) from `style_inputs`.
    """
    inputs = [low.astype(np.float32)]
    if generator.needs_style:
        if styles is None or noise is None:
            raise ValueError(f"{generator.name}: modconv needs a style and a noise map per image (style_inputs)")
        inputs += [styles, noise]
    return keras.ops.convert_to_numpy(generator.model(inputs, training=False))

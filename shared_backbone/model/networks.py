"""The paper's networks and the two baselines; the one place that knows the layer names.

Layer names follow Khoo, Lim & Phan's published Keras models so their HDF5 weights map onto
these models by name (`dConv_01`..`dDecision` for the primary module, `aConv_01`..`aDecision`
for a head). The trunk is the primary module up to `BRANCH_LAYER`; a head consumes its output.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from shared_backbone.model.features import feature_shape
from shared_backbone.model.preprocessing import channels_for, check_image_size

BRANCH_LAYER = "dRelu_04"
INIT_STDDEV = 0.02
DEFAULT_SEED = 2021
DEFAULT_BN_MOMENTUM = 0.9
BASELINES = ("gdaconv", "postpool")
POOLINGS = ("gap", "flatten")
TASKS = ("detection", "ovr", "multiclass")


@dataclass(frozen=True)
class ConvSpec:
    """One conv block of the paper: Conv2D [+ BatchNorm] + ReLU, 'same' padding."""

    index: str
    filters: int
    kernel: int
    stride: int
    batch_norm: bool


PRIMARY_TRUNK = (
    ConvSpec("01", 3, 3, 1, False),
    ConvSpec("02", 8, 4, 2, True),
    ConvSpec("03", 16, 3, 1, True),
    ConvSpec("04", 16, 4, 2, True),
)
PRIMARY_TAIL = (
    ConvSpec("05", 32, 3, 1, True),
    ConvSpec("06", 32, 4, 2, True),
)
HEAD_BLOCKS = (
    ConvSpec("01", 32, 3, 1, True),
    ConvSpec("02", 32, 4, 2, True),
)
PRIMARY, HEAD = "d", "a"  # the paper's layer-name prefixes: primary module (detector), head (attribution)
PRIMARY_DECISION = f"{PRIMARY}Decision"
HEAD_DECISION = f"{HEAD}Decision"


def block_layer(prefix: str, kind: str, spec: ConvSpec) -> str:
    """A conv block's layer name: `kind` is Conv, BNorm or Relu (`block_layer("d", "Conv", spec)` -> "dConv_01")."""
    return f"{prefix}{kind}_{spec.index}"


def _init(seed: int) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(mean=0.0, stddev=INIT_STDDEV, seed=seed)


def _baseline_init(seed: int) -> keras.initializers.Initializer:
    """Glorot (Keras' default, which the baselines' reference code used). The paper's N(0, 0.02)
    through gdaconv's four BN-free ReLU convs left the 64 px model's loss stuck at ln(K)."""
    return keras.initializers.GlorotUniform(seed=seed)


def _conv_block(x, prefix: str, spec: ConvSpec, seed: int, bn_momentum: float):
    x = layers.Conv2D(
        spec.filters,
        spec.kernel,
        strides=spec.stride,
        padding="same",
        use_bias=True,
        kernel_initializer=_init(seed),
        name=block_layer(prefix, "Conv", spec),
    )(x)
    if spec.batch_norm:
        x = layers.BatchNormalization(
            momentum=bn_momentum, epsilon=1e-3, name=block_layer(prefix, "BNorm", spec)
        )(x)
    return layers.ReLU(name=block_layer(prefix, "Relu", spec))(x)


def build_primary(
    image_size: int = 128,
    mode: str = "pixel",
    *,
    bn_momentum: float = DEFAULT_BN_MOMENTUM,
    seed: int = DEFAULT_SEED,
) -> keras.Model:
    """The primary (detection) module: trunk + tail + sigmoid `dDecision` (1 = fake).

    Pixel models pool with `dGAP`; DCT models flatten (`dFlatten`) as in the paper.
    """
    check_image_size(image_size)
    inputs = keras.Input((image_size, image_size, channels_for(mode)), name="dInput")
    x = inputs
    for i, spec in enumerate(PRIMARY_TRUNK + PRIMARY_TAIL):
        x = _conv_block(x, PRIMARY, spec, seed + i, bn_momentum)
    x = layers.GlobalAveragePooling2D(name="dGAP")(x) if pooling_for_mode(mode) == "gap" else layers.Flatten(name="dFlatten")(x)
    outputs = layers.Dense(1, activation="sigmoid", kernel_initializer=_init(seed + 99), name=PRIMARY_DECISION)(x)
    return keras.Model(inputs, outputs, name=f"primary_{mode}_{image_size}")


def build_source_classifier(primary: keras.Model, num_classes: int, *, seed: int = DEFAULT_SEED + 500) -> keras.Model:
    """The primary module's trunk (its layers, shared) + a multiclass block (`sConv_*` .. `sSource`).

    Training it teaches the trunk to tell the coordinator's sources apart, so the features every
    head reads carry fingerprints, not only "fake". The block is discarded afterwards: the
    published primary module keeps the paper's layers exactly.
    """
    mode = "pixel" if primary.input.shape[-1] == 3 else "dct"
    x = primary.get_layer(BRANCH_LAYER).output
    for i, spec in enumerate(HEAD_BLOCKS):
        x = _conv_block(x, "s", spec, seed + i, DEFAULT_BN_MOMENTUM)
    x = layers.GlobalAveragePooling2D(name="sGAP")(x) if pooling_for_mode(mode) == "gap" else layers.Flatten(name="sFlatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer=_init(seed + 99), name="sSource")(x)
    return keras.Model(primary.input, outputs, name="source_classifier")


def set_trunk_trainable(primary: keras.Model, trainable: bool) -> None:
    """Freezes (BatchNorm then in inference mode) or unfreezes the layers up to the branch point."""
    names = {f"d{kind}_{spec.index}" for spec in PRIMARY_TRUNK for kind in ("Conv", "BNorm", "Relu")}
    for layer in primary.layers:
        if layer.name in names:
            layer.trainable = trainable


def build_trunk(primary: keras.Model) -> keras.Model:
    """The shared backbone: the primary module's layers up to the branch point."""
    return keras.Model(primary.input, primary.get_layer(BRANCH_LAYER).output, name="trunk")


def build_serving_model(primary: keras.Model) -> keras.Model:
    """One pass that yields both the real/fake score and the trunk features for the heads."""
    return keras.Model(
        primary.input,
        [primary.output, primary.get_layer(BRANCH_LAYER).output],
        name="serving",
    )


def pooling_for_mode(mode: str) -> str:
    """The paper pools pixel models with GAP and flattens DCT models (primary and heads alike); residual
    input is pixels, high-passed, and pools as they do."""
    channels_for(mode)
    return "flatten" if mode == "dct" else "gap"


def build_head(
    image_size: int = 128,
    *,
    pooling: str = "gap",
    bn_momentum: float = DEFAULT_BN_MOMENTUM,
    seed: int = DEFAULT_SEED + 1000,
) -> keras.Model:
    """A secondary module: one-vs-rest sigmoid classifier on trunk features.

    `pooling="flatten"` gives the paper's DCT heads (`aFlatten` instead of `aGAP`).
    """
    check_image_size(image_size)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown head pooling {pooling!r}; expected one of {POOLINGS}")
    inputs = keras.Input(feature_shape(image_size), name="aInput")
    x = inputs
    for i, spec in enumerate(HEAD_BLOCKS):
        x = _conv_block(x, HEAD, spec, seed + i, bn_momentum)
    x = layers.GlobalAveragePooling2D(name="aGAP")(x) if pooling == "gap" else layers.Flatten(name="aFlatten")(x)
    outputs = layers.Dense(1, activation="sigmoid", kernel_initializer=_init(seed + 99), name=HEAD_DECISION)(x)
    return keras.Model(inputs, outputs, name="head")


def build_attribution_model(trunk: keras.Model, head: keras.Model, *, train_trunk: bool = False) -> keras.Model:
    """Trunk feeding a head. Frozen (BatchNorm in inference mode) for training a head; with `train_trunk`
    trained with it (fine-tuning the shared trunk for attribution: the trunk's layers are the primary
    module's own, so training this model moves the primary's trunk)."""
    trunk.trainable = train_trunk
    inputs = keras.Input(trunk.input_shape[1:], name="image")
    features = trunk(inputs) if train_trunk else trunk(inputs, training=False)
    return keras.Model(inputs, head(features), name="attribution")


def trainable_parameter_count(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))


def _output_layer(task: str, num_classes: int, seed: int):
    if task == "multiclass":
        if num_classes < 2:
            raise ValueError("a multiclass model needs at least 2 classes")
        return layers.Dense(num_classes, activation="softmax", kernel_initializer=_baseline_init(seed), name="output")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return layers.Dense(1, activation="sigmoid", kernel_initializer=_baseline_init(seed), name="output")


def build_gdaconv(image_size: int, mode: str, task: str, num_classes: int = 1, *, seed: int = DEFAULT_SEED) -> keras.Model:
    """Frank et al.'s simple CNN: Conv3-Conv8-Pool-Conv16-Pool-Conv32-Flatten-Dense, ReLU."""
    check_image_size(image_size)
    inputs = keras.Input((image_size, image_size, channels_for(mode)), name="input")
    x = inputs
    for i, (filters, pool) in enumerate(((3, False), (8, True), (16, True), (32, False))):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=_baseline_init(seed + i), name=f"conv_{i + 1}")(x)
        if pool:
            x = layers.AveragePooling2D(2, name=f"pool_{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _output_layer(task, num_classes, seed + 99)(x)
    return keras.Model(inputs, outputs, name=f"gdaconv_{task}")


def build_postpool(image_size: int, mode: str, task: str, num_classes: int = 1, *, seed: int = DEFAULT_SEED) -> keras.Model:
    """Yu et al.'s post-pooling network at quarter width, LeakyReLU(0.2)."""
    check_image_size(image_size)
    inputs = keras.Input((image_size, image_size, channels_for(mode)), name="input")
    x = inputs
    plan = ((4, False), (8, True), (8, False), (16, True), (16, False), (32, True))
    for i, (filters, pool) in enumerate(plan):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=_baseline_init(seed + i), name=f"conv_{i + 1}")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"lrelu_{i + 1}")(x)
        if pool:
            x = layers.AveragePooling2D(2, name=f"pool_{i + 1}")(x)
    side, extra = image_size // 8, 0
    while side > 4:
        extra += 1
        x = layers.AveragePooling2D(2, name=f"postpool_{extra}")(x)
        side //= 2
    x = layers.Conv2D(128, 3, padding="same", kernel_initializer=_baseline_init(seed + 50), name="conv_final")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="lrelu_final")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, kernel_initializer=_baseline_init(seed + 60), name="dense")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="lrelu_dense")(x)
    outputs = _output_layer(task, num_classes, seed + 99)(x)
    return keras.Model(inputs, outputs, name=f"postpool_{task}")


def build_baseline(name: str, image_size: int, mode: str, task: str, num_classes: int = 1, *, seed: int = DEFAULT_SEED) -> keras.Model:
    builders = {"gdaconv": build_gdaconv, "postpool": build_postpool}
    if name not in builders:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    return builders[name](image_size, mode, task, num_classes, seed=seed)

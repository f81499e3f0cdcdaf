"""Where a decision came from: CAM for GAP models, Grad-CAM for Flatten (DCT) models, as PNG overlays.

The paper's pixel models end in GlobalAveragePooling + Dense(1), so the class activation map is
exact and needs no gradient: CAM = sum_k w_k A_k over the last ReLU's channels (Zhou et al. 2016).
DCT models flatten before the decision, which CAM cannot express, so they get Grad-CAM (Selvaraju
et al. 2017) on the decision's logit. A DCT map lives in frequency space (row = vertical frequency,
column = horizontal frequency), so it is drawn over the log-DCT spectrum, beside the image.

Works on the primary module (input: model input) and on a head (input: wire-format trunk features).
"""

from __future__ import annotations

from pathlib import Path

import keras
import matplotlib
import numpy as np
from PIL import Image

from shared_backbone.model import networks
from shared_backbone.model.preprocessing import log_dct_spectrum

CAM = "cam"
GRAD_CAM = "grad-cam"
DEFAULT_ALPHA = 0.45
COLORMAP = "jet"
DISPLAY_SIDE = 256  # rendered overlays are enlarged (nearest neighbour) to at least this many pixels a side


def _layer_names(model: keras.Model) -> tuple[str, str]:
    """(last ReLU, decision layer) of a primary module or a head, from the names `networks` defines."""
    names = {layer.name for layer in model.layers}
    if networks.HEAD_DECISION in names:
        return networks.block_layer(networks.HEAD, "Relu", networks.HEAD_BLOCKS[-1]), networks.HEAD_DECISION
    if networks.PRIMARY_DECISION in names:
        return networks.block_layer(networks.PRIMARY, "Relu", networks.PRIMARY_TAIL[-1]), networks.PRIMARY_DECISION
    raise ValueError(f"model {model.name!r} has neither dDecision nor aDecision; no heatmap for it")


def method_for(model: keras.Model) -> str:
    """CAM when the decision reads global average pooling, Grad-CAM otherwise."""
    pooled = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    return CAM if pooled else GRAD_CAM


def _normalise(maps: np.ndarray, *, shift_min: bool) -> np.ndarray:
    """Each map to [0, 1]: CAM by min-max (relative evidence), Grad-CAM by its maximum (after ReLU)."""
    out = np.zeros_like(maps, dtype=np.float32)
    for i, heat in enumerate(maps):
        low = float(heat.min()) if shift_min else 0.0
        span = float(heat.max()) - low
        if span > 0:
            out[i] = (heat - low) / span
    return out


class HeatmapModel:
    """A model's heatmap probe, built once and reused for every batch (a server builds one at start).

    The probe is a Keras sub-model (last ReLU, decision input); with `compile=True` (servers) CAM
    runs it as one traced graph (`compiled.CompiledModel`), so a heatmap request costs one forward
    pass, never a new model or a trace.
    """

    def __init__(self, model: keras.Model, *, compile: bool = False) -> None:
        from shared_backbone.model.compiled import CompiledModel

        conv_name, decision_name = _layer_names(model)
        decision = model.get_layer(decision_name)
        self.method = method_for(model)
        self.probe = keras.Model(model.input, [model.get_layer(conv_name).output, decision.input])
        self.kernel = np.asarray(decision.kernel.numpy(), dtype=np.float64)[:, 0]
        self.bias = float(np.asarray(decision.bias.numpy()).reshape(-1)[0])
        use_graph = compile and self.method == CAM
        self.compiled = CompiledModel(self.probe, name=f"{model.name}_heatmap") if use_graph else None

    def raw(self, inputs: np.ndarray) -> tuple[np.ndarray, str]:
        """Unnormalised (N, h, w) maps at the last conv resolution and the method ("cam"/"grad-cam").

        CAM keeps its sign and scale, so its spatial mean plus the decision bias is the logit; Grad-CAM
        is ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d logit / d A_k.
        """
        inputs = np.asarray(inputs, dtype=np.float32)
        if self.method == CAM:
            outputs = self.compiled(inputs) if self.compiled is not None else self.probe(inputs, training=False)
            activations = np.asarray(outputs[0], dtype=np.float64)
            return np.einsum("nhwc,c->nhw", activations, self.kernel), CAM
        import tensorflow as tf

        with tf.GradientTape() as tape:
            activations, pre_decision = self.probe(tf.constant(inputs), training=False)
            logit = tf.linalg.matvec(pre_decision, tf.constant(self.kernel, dtype=pre_decision.dtype)) + self.bias
        gradients = tape.gradient(logit, activations).numpy().astype(np.float64)
        weights = gradients.mean(axis=(1, 2))  # alpha_k per image
        maps = np.einsum("nhwc,nc->nhw", activations.numpy().astype(np.float64), weights)
        return np.maximum(maps, 0.0), GRAD_CAM

    def compute(self, inputs: np.ndarray) -> tuple[np.ndarray, str]:
        """(N, h, w) maps in [0, 1] for drawing, and the method used ("cam"/"grad-cam")."""
        maps, method = self.raw(inputs)
        return _normalise(maps, shift_min=method == CAM), method


def raw_heatmaps(model: keras.Model, inputs: np.ndarray) -> tuple[np.ndarray, str]:
    """`HeatmapModel(model).raw(inputs)`, for one-off use (offline prediction, tests)."""
    return HeatmapModel(model).raw(inputs)


def compute_heatmaps(model: keras.Model, inputs: np.ndarray) -> tuple[np.ndarray, str]:
    """(N, h, w) maps in [0, 1] for drawing, and the method used ("cam"/"grad-cam")."""
    return HeatmapModel(model).compute(inputs)


def overlay(background: np.ndarray, heat: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blends a [0, 1] map in the `jet` colormap over a uint8 RGB image.

    The map is enlarged by nearest neighbour: each cell of the model's map stays one visible block,
    so the overlay shows the map's real resolution and invents no detail between cells.
    """
    height, width = background.shape[:2]
    resized = np.asarray(
        Image.fromarray(heat.astype(np.float32), mode="F").resize((width, height), Image.Resampling.NEAREST)
    )
    colours = matplotlib.colormaps[COLORMAP](np.clip(resized, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * background.astype(np.float64) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def spectrum_image(rgb: np.ndarray) -> np.ndarray:
    """The log-DCT spectrum of an image as a uint8 RGB picture (min-max scaled), the DCT map's canvas."""
    spectrum = log_dct_spectrum(rgb)
    low, high = float(spectrum.min()), float(spectrum.max())
    grey = np.zeros_like(spectrum) if high <= low else (spectrum - low) / (high - low) * 255.0
    return np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)


def render(rgb: np.ndarray, heat: np.ndarray, mode: str, min_side: int = DISPLAY_SIDE) -> np.ndarray:
    """Pixel and residual: the overlay on the image. DCT: the image beside the overlay on its spectrum.

    Drawn at the model's size, then enlarged by a whole factor (nearest neighbour, no smoothing)
    so a 64 px model's map is large enough to look at and every model pixel stays a square.
    """
    panel = overlay(rgb, heat) if mode != "dct" else np.concatenate([rgb, overlay(spectrum_image(rgb), heat)], axis=1)
    factor = max(1, -(-min_side // rgb.shape[0]))
    return panel.repeat(factor, axis=0).repeat(factor, axis=1)


def save_heatmap(path: str | Path, rgb: np.ndarray, heat: np.ndarray, mode: str) -> Path:
    """Writes the rendered overlay as a PNG and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(rgb, heat, mode)).save(path, format="PNG")
    return path

"""Khoo, Lim & Phan's published Keras 2.4 HDF5 models, read by layer name into our Keras 3 models.

Keras 3 cannot deserialise those files as models, and does not need to: `networks` uses the paper's
layer names, so the importer reads each layer's arrays from `model_weights/<layer>/<layer>/<var>:0`,
checks that the file's `model_config` describes the same layers (filters, kernel, stride, padding,
BatchNorm epsilon, pooling), and assigns the arrays by variable name. Nothing is guessed: a layer
missing from either side, a different shape or a different hyper-parameter is an error.

A "primary" file holds the detector (`d*` layers) and becomes a backbone bundle; an "attribution"
file holds the frozen `d*` layers plus one source's `a*` head and becomes a head, but only for the
bundle whose trunk arrays are exactly the ones the head was trained on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from shared_backbone.model import heads, networks
from shared_backbone.model.bundle import Bundle, sha256_file
from shared_backbone.model.preprocessing import InputSpec, Normstats

log = logging.getLogger(__name__)

PRIMARY = "primary"
ATTRIBUTION = "attribution"
POOLING_CLASSES = {"GlobalAveragePooling2D": "gap", "Flatten": "flatten"}
# Hyper-parameters that must agree between the file's layer config and ours, per layer class.
CHECKED_CONFIG = {
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias", "activation"),
    "BatchNormalization": ("epsilon", "center", "scale"),
    "Dense": ("units", "activation", "use_bias"),
}


class PaperWeightsError(ValueError):
    """A file that is not one of the paper's models, or does not fit ours; the message says why."""


@dataclass(frozen=True)
class PaperModel:
    """What one of the paper's HDF5 files holds, read without Keras."""

    path: Path
    kind: str  # PRIMARY or ATTRIBUTION
    image_size: int
    mode: str  # "pixel" or "dct"
    head_pooling: str | None  # "gap" / "flatten" for attribution files
    layer_configs: dict[str, dict[str, Any]]  # name -> {"class_name", "config", "inbound"}
    weights: dict[str, dict[str, np.ndarray]]  # layer name -> {variable name: array}
    keras_version: str
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name

    def provenance(self) -> dict[str, Any]:
        """What a bundle's `source` records about where its weights came from."""
        return {
            "kind": "paper-weights",
            "file": self.name,
            "sha256": self.sha256,
            "model": self.kind,
            "keras_version": self.keras_version,
            "image_size": self.image_size,
            "mode": self.mode,
        }


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _inbound_names(entry: dict[str, Any]) -> list[str]:
    """Names of the layers feeding a Keras 2 layer entry (`inbound_nodes: [[[name, 0, 0, {}], ...]]`)."""
    names = []
    for node in entry.get("inbound_nodes") or []:
        for item in node:
            if isinstance(item, list) and item:
                names.append(str(item[0]))
    return names


def _read_weights(path: Path, group: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
    weights: dict[str, dict[str, np.ndarray]] = {}
    for layer_name in (_decode(n) for n in group.attrs.get("layer_names", list(group.keys()))):
        layer_group = group.get(layer_name)
        if layer_group is None:
            raise PaperWeightsError(f"{path}: layer {layer_name} is listed but has no weight group")
        arrays = {}
        for weight_name in (_decode(n) for n in layer_group.attrs.get("weight_names", [])):
            dataset = layer_group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                raise PaperWeightsError(f"{path}: weight {layer_name}/{weight_name} is missing")
            variable = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
            arrays[variable] = np.asarray(dataset[()])
        if arrays:
            weights[layer_name] = arrays
    return weights


def _pooling_before(path: Path, layers: dict[str, dict[str, Any]], decision: str) -> str:
    feeding = layers[decision]["inbound"]
    if len(feeding) != 1 or feeding[0] not in layers:
        raise PaperWeightsError(f"{path}: cannot tell which layer feeds {decision}")
    class_name = layers[feeding[0]]["class_name"]
    if class_name not in POOLING_CLASSES:
        raise PaperWeightsError(f"{path}: {decision} reads a {class_name} layer; expected GAP or Flatten")
    return POOLING_CLASSES[class_name]


def read_paper_model(path: str | Path) -> PaperModel:
    """Reads and classifies one of the paper's HDF5 files (size, mode, primary/attribution)."""
    path = Path(path)
    if not path.is_file():
        raise PaperWeightsError(f"{path}: file not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise PaperWeightsError(f"{path}: not an HDF5 file ({exc})") from None
    with handle:
        if "model_config" not in handle.attrs or "model_weights" not in handle:
            raise PaperWeightsError(f"{path}: not a Keras 2 model file (no model_config / model_weights)")
        try:
            config = json.loads(_decode(handle.attrs["model_config"]))
        except json.JSONDecodeError as exc:
            raise PaperWeightsError(f"{path}: model_config is not JSON ({exc.msg})") from None
        keras_version = _decode(handle.attrs.get("keras_version", handle["model_weights"].attrs.get("keras_version", "?")))
        weights = _read_weights(path, handle["model_weights"])
    layers = {
        entry["config"]["name"]: {"class_name": entry["class_name"], "config": entry["config"], "inbound": _inbound_names(entry)}
        for entry in config.get("config", {}).get("layers", [])
    }
    inputs = [entry for entry in layers.values() if entry["class_name"] == "InputLayer"]
    if len(inputs) != 1:
        raise PaperWeightsError(f"{path}: expected one input layer, found {len(inputs)}")
    shape = inputs[0]["config"].get("batch_input_shape") or inputs[0]["config"].get("batch_shape")
    if not shape or len(shape) != 4 or shape[1] != shape[2] or shape[3] not in (1, 3):
        raise PaperWeightsError(f"{path}: input shape {shape} is not square HxWx1 (DCT) or HxWx3 (pixel)")
    image_size, mode = int(shape[1]), "dct" if shape[3] == 1 else "pixel"
    if networks.PRIMARY_DECISION not in layers:
        raise PaperWeightsError(f"{path}: no {networks.PRIMARY_DECISION} layer; not one of the paper's models")
    expected_pooling = "gap" if mode == "pixel" else "flatten"
    primary_pooling = _pooling_before(path, layers, networks.PRIMARY_DECISION)
    if primary_pooling != expected_pooling:
        raise PaperWeightsError(
            f"{path}: a {mode} primary pooled by {primary_pooling}; this project's {mode} models use {expected_pooling}"
        )
    head_pooling = None
    kind = PRIMARY
    if networks.HEAD_DECISION in layers:
        kind = ATTRIBUTION
        head_pooling = _pooling_before(path, layers, networks.HEAD_DECISION)
        first_conv = networks.block_layer(networks.HEAD, "Conv", networks.HEAD_BLOCKS[0])
        if layers.get(first_conv, {}).get("inbound") != [networks.BRANCH_LAYER]:
            raise PaperWeightsError(f"{path}: the head does not branch off {networks.BRANCH_LAYER}")
    return PaperModel(
        path=path,
        kind=kind,
        image_size=image_size,
        mode=mode,
        head_pooling=head_pooling,
        layer_configs=layers,
        weights=weights,
        keras_version=keras_version,
        sha256=sha256_file(path),
    )


def _normalised(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def load_into(model: keras.Model, paper: PaperModel) -> None:
    """Sets every weight of `model` from the file's layer of the same name, after checking configs."""
    for layer in model.layers:
        if not layer.weights:
            continue
        where = f"{paper.path}: layer {layer.name}"
        entry = paper.layer_configs.get(layer.name)
        if entry is None or layer.name not in paper.weights:
            raise PaperWeightsError(f"{where} is missing from the file")
        if entry["class_name"] != type(layer).__name__:
            raise PaperWeightsError(f"{where} is a {entry['class_name']}, expected {type(layer).__name__}")
        ours = layer.get_config()
        for key in CHECKED_CONFIG.get(entry["class_name"], ()):
            theirs = entry["config"].get(key)
            if _normalised(theirs) != _normalised(ours.get(key)):
                raise PaperWeightsError(f"{where}: {key} is {theirs!r} in the file, {ours.get(key)!r} in this project's model")
        arrays = paper.weights[layer.name]
        expected = {variable.path.rsplit("/", 1)[-1] for variable in layer.weights}
        if set(arrays) != expected:
            raise PaperWeightsError(f"{where} holds {sorted(arrays)}, expected {sorted(expected)}")
        for variable in layer.weights:
            name = variable.path.rsplit("/", 1)[-1]
            array = arrays[name]
            if tuple(array.shape) != tuple(variable.shape):
                raise PaperWeightsError(f"{where}: {name} has shape {array.shape}, expected {tuple(variable.shape)}")
            variable.assign(array.astype(np.float32))


def trunk_layer_names() -> list[str]:
    """The weighted layers of the shared trunk (`dConv_01`..`dBNorm_04`), from `networks`."""
    names = []
    for spec in networks.PRIMARY_TRUNK:
        names.append(networks.block_layer(networks.PRIMARY, "Conv", spec))
        if spec.batch_norm:
            names.append(networks.block_layer(networks.PRIMARY, "BNorm", spec))
    return names


def trunk_differences(paper: PaperModel, primary: keras.Model) -> list[str]:
    """Trunk variables whose arrays in the file differ from `primary`'s ("dConv_01/kernel (max |diff| …)")."""
    differences = []
    for layer_name in trunk_layer_names():
        layer = primary.get_layer(layer_name)
        arrays = paper.weights.get(layer_name, {})
        for variable in layer.weights:
            name = variable.path.rsplit("/", 1)[-1]
            theirs, ours = arrays.get(name), np.asarray(variable.numpy())
            if theirs is None:
                differences.append(f"{layer_name}/{name} (missing from the file)")
            elif theirs.shape != ours.shape:
                differences.append(f"{layer_name}/{name} (shape {theirs.shape} vs {ours.shape})")
            elif not np.array_equal(theirs, ours):
                differences.append(f"{layer_name}/{name} (max |diff| {np.max(np.abs(theirs - ours)):.3g})")
    return differences


def import_primary(path: str | Path, normstats_dir: str | Path | None = None) -> tuple[keras.Model, InputSpec, PaperModel]:
    """A primary-module file -> (our primary model with its weights, its InputSpec, the file's description).

    DCT models need the normstats they were trained with; without them the bundle would standardise
    the spectrum differently from the paper and every score would be wrong, so this refuses.
    """
    paper = read_paper_model(path)
    if paper.kind != PRIMARY:
        raise PaperWeightsError(
            f"{paper.path}: an attribution model (d* trunk + a* head); import it with `attribnet node import-paper-head`"
        )
    normstats = None
    if paper.mode == "dct":
        if not normstats_dir:
            raise PaperWeightsError(
                f"{paper.path}: a DCT model needs the normstats it was trained with (--normstats DIR with mean.npy, std_dev.npy)"
            )
        normstats = Normstats.load(normstats_dir)
    elif normstats_dir:
        log.warning("%s is a pixel model; ignoring --normstats %s", paper.name, normstats_dir)
    try:
        spec = InputSpec(paper.image_size, paper.mode, normstats)
    except ValueError as exc:
        raise PaperWeightsError(f"{paper.path}: {exc}") from None
    primary = networks.build_primary(paper.image_size, paper.mode)
    load_into(primary, paper)
    log.info("imported %s: %s primary, %dpx (sha256 %s)", paper.name, paper.mode, paper.image_size, paper.sha256[:12])
    return primary, spec, paper


def import_head(path: str | Path, bundle: Bundle) -> tuple[keras.Model, PaperModel]:
    """An attribution file -> its head as our head model, refused unless its trunk is `bundle`'s trunk."""
    paper = read_paper_model(path)
    if paper.kind != ATTRIBUTION:
        raise PaperWeightsError(
            f"{paper.path}: a primary module without a head; import it with `attribnet coordinator import-paper-weights`"
        )
    spec = bundle.manifest["input"]
    problems = []
    if (paper.image_size, paper.mode) != (spec["image_size"], spec["mode"]):
        problems.append(
            f"the file takes {paper.mode} {paper.image_size}px input, the backbone {spec['mode']} {spec['image_size']}px"
        )
    differences = trunk_differences(paper, bundle.load_primary())
    if differences:
        more = f" and {len(differences) - 1} more" if len(differences) > 1 else ""
        problems.append(f"trunk weights differ at {differences[0]}{more}")
    if problems:
        raise PaperWeightsError(
            f"{paper.name} was not trained on backbone {bundle.short_digest} ({bundle.path}): {'; '.join(problems)}"
        )
    head = heads.build_head_model(paper.image_size, paper.head_pooling or "gap")
    load_into(head, paper)
    log.info("imported the head of %s (%s pooling) onto backbone %s", paper.name, paper.head_pooling, bundle.short_digest)
    return head, paper

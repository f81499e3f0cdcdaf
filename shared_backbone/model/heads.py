"""A trained head as stored in a node's state folder, bound to one backbone digest.

Layout of HEAD/:
  head.weights.h5   the secondary module's weights (`aConv_01` .. `aDecision`)
  typicality.npz    the source's one-class density on trunk statistics (`model.typicality`);
                    absent for heads without one (imported paper heads)
  head.json         source, backbone digest and version, feature shape, pooling, calibration
                    (with the conformal and typicality references), threshold, metrics, sha256 of
                    the weights and of typicality.npz (checked on load)

Heads pool with `aGAP` on pixel backbones and flatten (`aFlatten`) on DCT backbones, as in the
paper; head.json records which, so `load_head` rebuilds the same graph.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np

from shared_backbone.model import networks
from shared_backbone.model.bundle import Bundle, sha256_file
from shared_backbone.model.calibration import Calibration, CalibrationError
from shared_backbone.model.rule import DEFAULT_THRESHOLD
from shared_backbone.model.typicality import TypicalityError, TypicalityModel

HEAD_WEIGHTS = "head.weights.h5"
HEAD_META = "head.json"
HEAD_TYPICALITY = "typicality.npz"


class HeadError(ValueError):
    """A head that is missing, corrupt or bound to another backbone."""


@dataclass
class Head:
    """A head's model and metadata, ready to score trunk features."""

    source: str
    model: keras.Model
    backbone_digest: str
    calibration: Calibration = field(default_factory=Calibration)
    threshold: float = DEFAULT_THRESHOLD
    metrics: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    typicality: TypicalityModel | None = None

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """Sigmoid outputs for a batch of trunk features (N, H/4, W/4, 16)."""
        return np.asarray(self.model(features, training=False)).reshape(-1).astype(np.float64)

    def typicality_scores(self, features: np.ndarray) -> np.ndarray | None:
        """How typical of this source each image is (None: the head has no typicality model)."""
        return None if self.typicality is None else self.typicality.score(features)


def build_head_model(image_size: int, pooling: str = "gap") -> keras.Model:
    """`networks.build_head` with the error type of this module for a bad `pooling` in head.json."""
    if pooling not in networks.POOLINGS:
        raise HeadError(f"unknown head pooling {pooling!r}; expected one of {networks.POOLINGS}")
    return networks.build_head(image_size, pooling=pooling)


def head_pooling(model: keras.Model) -> str:
    """"flatten" for a head whose decision reads `aFlatten`, else "gap"."""
    return "flatten" if any(layer.name == "aFlatten" for layer in model.layers) else "gap"


def save_head(
    directory: str | Path,
    model: keras.Model,
    *,
    source: str,
    bundle: Bundle,
    calibration: Calibration,
    threshold: float = DEFAULT_THRESHOLD,
    metrics: dict[str, Any] | None = None,
    typicality: TypicalityModel | None = None,
) -> Head:
    """Writes the head into a temporary folder beside `directory`, then renames it into place.

    A server reading `directory` (`node serve` reloads heads) never sees half a head.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.incoming-", dir=directory.parent))
    try:
        model.save_weights(staging / HEAD_WEIGHTS)
        digest = sha256_file(staging / HEAD_WEIGHTS)
        if typicality is not None:
            (staging / HEAD_TYPICALITY).write_bytes(typicality.to_bytes())
        meta = {
            "source": source,
            "backbone_digest": bundle.digest,
            "backbone_version": bundle.version,
            "image_size": bundle.manifest["input"]["image_size"],
            "feature_shape": bundle.manifest["feature_shape"],
            "pooling": head_pooling(model),
            "calibration": calibration.to_dict(),
            "threshold": threshold,
            "metrics": metrics or {},
            "weights_sha256": digest,
            "typicality_sha256": sha256_file(staging / HEAD_TYPICALITY) if typicality is not None else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staging / HEAD_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        _replace_folder(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Head(source, model, bundle.digest, calibration, threshold, metrics or {}, digest, typicality)


def _replace_folder(staging: Path, directory: Path) -> None:
    """Renames `staging` to `directory`, moving an older folder aside first (two renames, no copy)."""
    if directory.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.retired-", dir=directory.parent))
        os.replace(directory, retired / directory.name)
        os.replace(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, directory)


def read_head_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / HEAD_META
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HeadError(f"{directory}: not a head folder ({HEAD_META} missing)") from None
    except json.JSONDecodeError as exc:
        raise HeadError(f"{path}: invalid JSON ({exc.msg})") from None


def load_head(directory: str | Path, bundle: Bundle) -> Head:
    """Loads a head and refuses it unless it was trained on exactly this bundle."""
    directory = Path(directory)
    meta = read_head_meta(directory)
    if meta.get("backbone_digest") != bundle.digest:
        raise HeadError(
            f"{directory}: head for source {meta.get('source')!r} was trained on backbone "
            f"{str(meta.get('backbone_digest'))[:12]}, not on {bundle.short_digest} ({bundle.path})"
        )
    weights = directory / HEAD_WEIGHTS
    if not weights.is_file():
        raise HeadError(f"{directory}: {HEAD_WEIGHTS} missing")
    digest = sha256_file(weights)
    if digest != meta.get("weights_sha256"):
        raise HeadError(f"{directory}: {HEAD_WEIGHTS} does not match its recorded sha256 (tampered?)")
    try:
        calibration = Calibration.from_dict(meta["calibration"])
    except (KeyError, CalibrationError) as exc:
        raise HeadError(f"{directory / HEAD_META}: invalid calibration ({exc})") from None
    typicality = _load_typicality(directory, meta.get("typicality_sha256"))
    model = build_head_model(int(meta["image_size"]), meta.get("pooling", "gap"))
    try:
        model.load_weights(weights)
    except (OSError, ValueError) as exc:
        raise HeadError(f"{weights}: cannot load the head's weights ({exc})") from None
    return Head(
        source=meta["source"],
        model=model,
        backbone_digest=meta["backbone_digest"],
        calibration=calibration,
        threshold=float(meta.get("threshold", DEFAULT_THRESHOLD)),
        metrics=meta.get("metrics", {}),
        digest=digest,
        typicality=typicality,
    )


def _load_typicality(directory: Path, recorded: str | None) -> TypicalityModel | None:
    """The head's typicality model when head.json records one, checked against its sha256."""
    path = directory / HEAD_TYPICALITY
    if not recorded:
        return None
    if not path.is_file():
        raise HeadError(f"{directory}: {HEAD_TYPICALITY} missing (head.json records one)")
    if sha256_file(path) != recorded:
        raise HeadError(f"{directory}: {HEAD_TYPICALITY} does not match its recorded sha256 (tampered?)")
    try:
        return TypicalityModel.from_file(path)
    except TypicalityError as exc:
        raise HeadError(str(exc)) from None

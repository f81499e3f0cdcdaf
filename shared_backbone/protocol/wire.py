"""How arrays, calibrations and metrics travel inside `attribution.v1` messages.

The gateway encodes trunk features with `features_to_request` and a node decodes them with
`features_from_request`; both sides live here so the wire format has exactly one definition.
Features travel in the heads' input precision (`model.features.FEATURE_DTYPE`, float16),
little-endian; this module imports no Keras.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2

from shared_backbone.model.calibration import Calibration
from shared_backbone.model.features import FEATURE_DTYPE, as_head_features
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

WIRE_DTYPE_NAME = np.dtype(FEATURE_DTYPE).name


class WireError(ValueError):
    """A message whose content does not match what the protocol requires; the text says why."""


def features_to_request(features: np.ndarray, backbone_digest: str = "") -> pb.ScoreRequest:
    """A ScoreRequest carrying a batch of trunk features as little-endian float16 bytes."""
    wire = as_head_features(features)
    return pb.ScoreRequest(
        features=wire.astype(wire.dtype.newbyteorder("<"), copy=False).tobytes(),
        shape=list(wire.shape),
        dtype=WIRE_DTYPE_NAME,
        backbone_digest=backbone_digest,
    )


def features_from_request(
    request: pb.ScoreRequest, feature_shape: tuple[int, ...], max_batch: int
) -> np.ndarray:
    """The float16 batch of a ScoreRequest, or WireError naming what is wrong with it."""
    if request.dtype != WIRE_DTYPE_NAME:
        raise WireError(f"dtype must be {WIRE_DTYPE_NAME!r}, got {request.dtype!r}")
    shape = tuple(int(s) for s in request.shape)
    expected = (len(feature_shape) + 1, tuple(feature_shape))
    if len(shape) != expected[0] or shape[1:] != expected[1]:
        raise WireError(f"shape must be [batch, {', '.join(map(str, feature_shape))}], got {list(shape)}")
    if not 1 <= shape[0] <= max_batch:
        raise WireError(f"batch size must be between 1 and {max_batch}, got {shape[0]}")
    itemsize = np.dtype(FEATURE_DTYPE).itemsize
    if len(request.features) != math.prod(shape) * itemsize:
        raise WireError(
            f"features hold {len(request.features)} bytes; shape {list(shape)} of {WIRE_DTYPE_NAME} "
            f"needs {math.prod(shape) * itemsize}"
        )
    array = np.frombuffer(request.features, dtype=np.dtype(FEATURE_DTYPE).newbyteorder("<")).reshape(shape)
    if not np.isfinite(array).all():
        raise WireError("features contain NaN or infinity")
    return array.astype(FEATURE_DTYPE)


def calibration_to_proto(calibration: Calibration) -> pb.Calibration:
    return pb.Calibration(method=calibration.method, a=calibration.a, b=calibration.b,
                          positive_scores=list(calibration.positive_scores),
                          typicality_scores=list(calibration.typicality_scores))


def calibration_from_proto(message: pb.Calibration) -> Calibration:
    """Raises CalibrationError (a ValueError) for anything that is not a valid calibration."""
    return Calibration.from_dict(calibration_fields(message))


def calibration_fields(message: pb.Calibration) -> dict[str, Any]:
    """A Calibration message as the plain dict `Calibration.from_dict` and the registry read."""
    return {"method": message.method, "a": message.a, "b": message.b, "positive_scores": list(message.positive_scores),
            "typicality_scores": list(message.typicality_scores)}


def metrics_to_struct(metrics: dict[str, Any]) -> struct_pb2.Struct:
    """Metrics as a protobuf Struct (numbers become doubles; non-JSON values become strings)."""
    struct = struct_pb2.Struct()
    struct.update(_jsonable(metrics))
    return struct


def metrics_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    return str(value)

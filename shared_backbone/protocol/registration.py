"""What a node says about its head when it registers: one typed record, read and written here only.

A node registers by the gRPC `RegistryService` (a `RegisterRequest`) or by its reply to the Flower
head round (a `ConfigRecord`), and the coordinator keeps it as a row of its SQLite registry; the
three forms are converted here, so every field has one definition. Reading checks types and
builds the `Calibration` (which refuses an invalid map); what a registration may *say* (name
patterns, endpoint policy, threshold range, metric sizes) is `coordinator.validation`'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from shared_backbone.model.calibration import Calibration, CalibrationError
from shared_backbone.protocol import wire
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

MAX_TEXT = 300  # characters of any text field (an endpoint is the longest legitimate one)
TEXT_FIELDS = ("node_id", "source", "endpoint", "head_digest", "backbone_digest", "backbone_version")
JSON_FIELDS = ("calibration", "metrics")  # travel as JSON text in a Flower record and a registry row

RecordType = TypeVar("RecordType", bound="Registration")


class InvalidRegistration(ValueError):
    """Something a node said about itself that is not acceptable; the message names the field."""


@dataclass(frozen=True)
class Registration:
    """A node's head as it announces it: who serves which source where, on which backbone, on what scale."""

    node_id: str
    source: str
    endpoint: str
    head_digest: str
    backbone_digest: str
    backbone_version: str
    calibration: Calibration
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_fields(cls: type[RecordType], fields: Mapping[str, Any], **extra: Any) -> RecordType:
        """From plain values (calibration a mapping or a `Calibration`); InvalidRegistration names a bad field.

        `extra`: a subclass's own fields."""
        values: dict[str, Any] = {name: _text(fields, name) for name in TEXT_FIELDS}
        values["calibration"] = _calibration(fields.get("calibration"))
        values["threshold"] = _number(fields.get("threshold"), "threshold")
        metrics = fields.get("metrics")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise InvalidRegistration("metrics must be a mapping")
        values["metrics"] = dict(metrics or {})
        return cls(**values, **extra)

    def values(self) -> dict[str, Any]:
        """The record's own fields, shallow (the calibration stays a `Calibration`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Registration)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, a subclass's own fields included (the calibration as its dict)."""
        every = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**every, "calibration": self.calibration.to_dict()}

    def to_proto(self) -> pb.RegisterRequest:
        values = self.values()
        return pb.RegisterRequest(**{**values, "calibration": wire.calibration_to_proto(self.calibration),
                                     "metrics": wire.metrics_to_struct(self.metrics)})

    @classmethod
    def from_proto(cls: type[RecordType], request: pb.RegisterRequest) -> RecordType:
        values = {name: getattr(request, name) for name in (*TEXT_FIELDS, "threshold")}
        return cls.from_fields({**values, "calibration": _calibration_from_proto(request.calibration),
                                "metrics": wire.metrics_from_struct(request.metrics)})

    def to_json_values(self) -> dict[str, Any]:
        """The Flower `ConfigRecord` values and the registry row: calibration and metrics as JSON text."""
        plain = {"calibration": self.calibration.to_dict(), "metrics": self.metrics}
        return {**self.values(), **{name: json.dumps(plain[name], sort_keys=True) for name in JSON_FIELDS}}

    @classmethod
    def from_json_values(cls: type[RecordType], values: Mapping[str, Any], **extra: Any) -> RecordType:
        """From a Flower reply's record or a registry row (as `to_json_values` writes them)."""
        decoded = dict(values)
        for name in JSON_FIELDS:
            if not isinstance(values.get(name), str):
                raise InvalidRegistration(f"{name} must be JSON text")
            try:
                decoded[name] = json.loads(values[name])
            except (ValueError, RecursionError):
                raise InvalidRegistration(f"{name} is not valid JSON") from None
        return cls.from_fields(decoded, **extra)


COLUMNS = tuple(f.name for f in dataclasses.fields(Registration))  # the registry's columns of a registration


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name, "" if name == "backbone_version" else None)
    if not isinstance(value, str):
        raise InvalidRegistration(f"{name} must be text, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise InvalidRegistration(f"{name} is {len(value)} characters long; at most {MAX_TEXT}")
    return value


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRegistration(f"{name} {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidRegistration(f"{name} {number} is not finite")
    return number


def _calibration(value: Any) -> Calibration:
    if isinstance(value, Calibration):
        return value
    if not isinstance(value, Mapping):
        raise InvalidRegistration("calibration must be a mapping with method, a and b")
    try:
        return Calibration.from_dict(dict(value))
    except CalibrationError as exc:
        raise InvalidRegistration(f"calibration: {exc}") from None


def _calibration_from_proto(message: pb.Calibration) -> Calibration:
    try:
        return wire.calibration_from_proto(message)
    except CalibrationError as exc:
        raise InvalidRegistration(f"calibration: {exc}") from None

"""The verdict of one Flower run: what happened to every node, written as JSON.

`flwr run` exits 0 even when a ServerApp raised, so this file, written on every path, is the
run's verdict.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared_backbone.protocol.registration import Registration

REGISTERED, FAILED, TIMED_OUT, REJECTED = "registered", "failed", "timed_out", "rejected"


class FederationError(RuntimeError):
    """A run that cannot proceed (no nodes, no bundle, no node agreed to fine-tune)."""


@dataclass
class NodeResult:
    """What happened to one Flower node in one round; `registration`: what its reply said, once it parsed.

    In the verdict JSON the registration's fields stand beside the others (`to_dict`)."""

    flower_node_id: int
    status: str
    registration: Registration | None = None
    error: str = ""
    seconds: float = 0.0
    reply_bytes: int = 0
    reply_records: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """The source the node said it serves ("" before its reply parsed)."""
        return self.registration.source if self.registration else ""

    def to_dict(self) -> dict[str, Any]:
        outcome = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "registration"}
        return {**outcome, **(self.registration.to_dict() if self.registration else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NodeResult":
        outcome = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        registration = Registration.from_fields(data) if "calibration" in data else None
        return cls(**outcome, registration=registration)


@dataclass
class FederationResult:
    """The verdict of one run, written as JSON."""

    status: str = "running"
    backbone: dict[str, Any] = field(default_factory=dict)
    nodes: list[NodeResult] = field(default_factory=list)
    finetune: dict[str, Any] = field(default_factory=dict)
    flower: dict[str, Any] = field(default_factory=dict)  # engine, run id and status (filled by the launcher)
    error: str = ""
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    @property
    def registered(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status == REGISTERED]

    @property
    def problems(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status != REGISTERED]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["nodes"] = [node.to_dict() for node in self.nodes]
        data["summary"] = {
            status: sum(1 for n in self.nodes if n.status == status) for status in (REGISTERED, FAILED, TIMED_OUT, REJECTED)
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FederationResult":
        values = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
        values["nodes"] = [NodeResult.from_dict(n) for n in data.get("nodes", [])]
        return cls(**values)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_result(path: str | Path, result: FederationResult) -> Path:
    """Writes the result JSON atomically (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    staging.replace(path)
    return path


def read_result(path: str | Path) -> FederationResult:
    path = Path(path)
    try:
        return FederationResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FederationError(f"federation result {path} not found (did the ServerApp start?)") from None

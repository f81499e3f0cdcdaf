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

REGISTERED, FAILED, TIMED_OUT, REJECTED = "registered", "failed", "timed_out", "rejected"


class FederationError(RuntimeError):
    """A run that cannot proceed (no nodes, no bundle, no node agreed to fine-tune)."""


@dataclass
class NodeResult:
    """What happened to one Flower node in one round."""

    flower_node_id: int
    status: str
    node_id: str = ""
    source: str = ""
    endpoint: str = ""
    head_digest: str = ""
    backbone_digest: str = ""
    backbone_version: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    reply_bytes: int = 0
    reply_records: list[str] = field(default_factory=list)


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
        data["summary"] = {
            status: sum(1 for n in self.nodes if n.status == status) for status in (REGISTERED, FAILED, TIMED_OUT, REJECTED)
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FederationResult":
        values = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
        values["nodes"] = [NodeResult(**n) for n in data.get("nodes", [])]
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

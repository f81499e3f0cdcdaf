"""The node registry: which node serves which source, where, on which backbone; durable in SQLite.

Identity: the first registration of a node id stores the sha256 of the node's secret; every later
register or heartbeat for that id must present the same secret, so one node (even one holding the
network's shared registration token) cannot overwrite another node's entry. A source is served by
one node at a time: a second node id claiming a registered source is refused until the operator
removes the first (`attribnet coordinator registry remove NODE_ID`).

Status is derived when read: `stale` when the last heartbeat is older than `stale_after` seconds,
`healthy` otherwise. Every write is committed at once, so a restarted coordinator finds every node.

Reads are served from an in-memory snapshot, not from SQLite: the gateway reads the registry for
every batch it serves. The snapshot is replaced on every write through this object (`version`
counts them) and re-read when another process changed the file (`PRAGMA data_version`, checked
at most every `EXTERNAL_CHECK_SECONDS`), e.g. `attribnet coordinator registry remove`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HEALTHY = "healthy"
STALE = "stale"
EXTERNAL_CHECK_SECONDS = 1.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    backbone_digest TEXT NOT NULL,
    backbone_version TEXT NOT NULL DEFAULT '',
    head_digest TEXT NOT NULL,
    calibration TEXT NOT NULL,
    threshold REAL NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    secret_sha256 TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1
);
"""


class RegistryError(ValueError):
    """A registry operation that is refused; subclasses map to gRPC status codes."""


class IdentityMismatch(RegistryError):
    """The secret presented does not match the one bound to the node id."""


class SourceTaken(RegistryError):
    """Another node id already serves this source."""


class UnknownNode(RegistryError):
    """No entry for this node id."""


@dataclass
class NodeEntry:
    """One registered node as stored, plus its derived status."""

    node_id: str
    source: str
    endpoint: str
    backbone_digest: str
    backbone_version: str
    head_digest: str
    calibration: dict[str, Any]
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    generation: int = 1
    status: str = HEALTHY


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Registry:
    """Thread-safe SQLite registry; one connection guarded by a lock (writes are tiny)."""

    def __init__(self, path: str | Path, *, stale_after: float = 20.0, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"registry {self.path}: cannot open ({exc})") from None
        self.version = 0
        self._snapshot: tuple[NodeEntry, ...] | None = None
        self._data_version = -1
        self._checked = 0.0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def register(
        self,
        *,
        node_id: str,
        source: str,
        endpoint: str,
        backbone_digest: str,
        head_digest: str,
        calibration: dict[str, Any],
        threshold: float,
        secret: str,
        backbone_version: str = "",
        metrics: dict[str, Any] | None = None,
    ) -> NodeEntry:
        """Adds or refreshes an entry (idempotent per node id); raises IdentityMismatch/SourceTaken."""
        for name, value in (("node_id", node_id), ("source", source), ("endpoint", endpoint), ("secret", secret)):
            if not value:
                raise RegistryError(f"{name} must not be empty")
        now = self.clock()
        digest = secret_digest(secret)
        with self._lock, self._db:
            row = self._db.execute("SELECT secret_sha256, generation FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row and not hmac.compare_digest(row[0], digest):
                raise IdentityMismatch(f"node id {node_id!r} is registered by another node (secret does not match)")
            owner = self._db.execute(
                "SELECT node_id FROM nodes WHERE source = ? AND node_id != ?", (source, node_id)
            ).fetchone()
            if owner:
                raise SourceTaken(f"source {source!r} is already served by node {owner[0]!r}")
            values = (
                source, endpoint, backbone_digest, backbone_version, head_digest,
                json.dumps(calibration, sort_keys=True), float(threshold), json.dumps(metrics or {}, sort_keys=True),
            )
            if row:
                self._db.execute(
                    "UPDATE nodes SET source=?, endpoint=?, backbone_digest=?, backbone_version=?, head_digest=?,"
                    " calibration=?, threshold=?, metrics=?, last_heartbeat=?, generation=generation+1"
                    " WHERE node_id=?",
                    (*values, now, node_id),
                )
            else:
                self._db.execute(
                    "INSERT INTO nodes (source, endpoint, backbone_digest, backbone_version, head_digest, calibration,"
                    " threshold, metrics, node_id, secret_sha256, registered_at, last_heartbeat)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, node_id, digest, now, now),
                )
            self._changed()
        return self.get(node_id)

    def heartbeat(self, node_id: str, secret: str) -> NodeEntry:
        """Records that the node is alive; raises UnknownNode or IdentityMismatch."""
        with self._lock, self._db:
            row = self._db.execute("SELECT secret_sha256 FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise UnknownNode(f"node id {node_id!r} is not registered")
            if not hmac.compare_digest(row[0], secret_digest(secret)):
                raise IdentityMismatch(f"node id {node_id!r} is registered by another node (secret does not match)")
            self._db.execute("UPDATE nodes SET last_heartbeat = ? WHERE node_id = ?", (self.clock(), node_id))
            self._changed()
        return self.get(node_id)

    def remove(self, node_id: str) -> bool:
        """Deletes an entry (the operator's tool for a retired node); True when it existed."""
        with self._lock, self._db:
            removed = self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount > 0
            self._changed()
            return removed

    def get(self, node_id: str) -> NodeEntry:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        if row is None:
            raise UnknownNode(f"node id {node_id!r} is not registered")
        return self._entry(row)

    def list(self) -> list[NodeEntry]:
        """Every entry, ordered by source, with its current status (from the in-memory snapshot)."""
        now = self.clock()
        return [dataclasses.replace(entry, status=self.status_at(entry, now)) for entry in self.snapshot()]

    def snapshot(self) -> tuple[NodeEntry, ...]:
        """The stored entries as last read (status not derived): re-read only after a change."""
        with self._lock:
            self._check_external()
            if self._snapshot is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM nodes ORDER BY source, node_id").fetchall()
                self._snapshot = tuple(self._entry(row) for row in rows)
            return self._snapshot

    def status_at(self, entry: NodeEntry, now: float) -> str:
        """`stale` when the entry's last heartbeat is older than `stale_after` at `now`, else `healthy`."""
        return STALE if now - entry.last_heartbeat > self.stale_after else HEALTHY

    def _changed(self) -> None:
        """After a write through this object (lock held): the snapshot must be re-read."""
        self._snapshot = None
        self.version += 1

    def _check_external(self) -> None:
        """Drops the snapshot when another connection committed since the last check (lock held)."""
        now = time.monotonic()
        if now - self._checked < EXTERNAL_CHECK_SECONDS:
            return
        self._checked = now
        data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version:
            if self._data_version != -1:
                self._changed()
            self._data_version = data_version

    def _entry(self, row: tuple) -> NodeEntry:
        entry = NodeEntry(
            node_id=row[0], source=row[1], endpoint=row[2], backbone_digest=row[3], backbone_version=row[4],
            head_digest=row[5], calibration=json.loads(row[6]), threshold=row[7], metrics=json.loads(row[8]),
            registered_at=row[9], last_heartbeat=row[10], generation=row[11],
        )
        entry.status = self.status_at(entry, self.clock())
        return entry


_COLUMNS = (
    "node_id, source, endpoint, backbone_digest, backbone_version, head_digest, calibration, threshold,"
    " metrics, registered_at, last_heartbeat, generation"
)

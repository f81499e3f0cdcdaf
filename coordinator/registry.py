"""The node registry: which node serves which source, where, on which backbone; durable in SQLite.

Identity: a node id exists only once the coordinator admin enrolled it for one source
(`enrol`, which returns a one-time token). The first registration of that id binds the node's
public key (see `shared_backbone.protocol.identity`) and uses up the enrolment; every later
register or heartbeat for the id must be signed with the same key, and may not change the
source. A source is served by one node id at a time. The admission checks (signatures,
enrolment proofs) are `coordinator.admission`'s; this module stores and enforces the bindings.

Everything a node says arrives as one `Registration` (`shared_backbone.protocol.registration`,
which also maps it to this table's columns) and is checked by
`coordinator.validation.validate_registration` before it is stored, whichever path it came by.

Status is derived when read: `left` (the node deregistered when it stopped), `quarantined` (an
audit found the node claiming what is not its own; only the admin clears it), `pending_audit`
(registered, not yet audited, when audits are on), `stale` (no heartbeat for `stale_after` s), else
`healthy`. Only healthy nodes are queried; the gateway lists every other one of its backbone in
`missing_nodes`, except a node that left, which is out of the network, not missing.
Every write is committed at once, so a restarted coordinator finds every node.

Leaving (`deregister`, the node's signed `RegistryService.Deregister`) keeps the row and stamps
`left_at`, rather than deleting it: the node keeps its key binding and source (its enrolment token
was used up, so a deleted node could not come back without the admin), the admin still sees it in
`attribnet coordinator registry list` as `left`, and a quarantine stays on the row, so leaving and
registering again never lifts it. Only the registration that is current may leave (its
`generation`): an older process of the node cannot remove a newer one. A later `register` of the
node clears `left_at`; its heartbeats are refused until then. `remove` (the admin) deletes.

Reads are served from an in-memory snapshot, not from SQLite: the gateway reads the registry for
every batch it serves. The snapshot is replaced on every write through this object (`version`
counts them) and re-read when another process changed the file (`PRAGMA data_version`, checked
at most every `EXTERNAL_CHECK_SECONDS`), e.g. `attribnet coordinator registry remove`.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from coordinator.registry_schema import SchemaTooOld, prepare
from coordinator.validation import EndpointPolicy, InvalidRegistration, check_node_id, check_source, validate_registration
from shared_backbone.protocol import identity
from shared_backbone.protocol.registration import COLUMNS as REGISTRATION_COLUMNS
from shared_backbone.protocol.registration import Registration

HEALTHY = "healthy"
STALE = "stale"
QUARANTINED = "quarantined"
PENDING_AUDIT = "pending_audit"
STARTING = "starting"  # PENDING_AUDIT as clients see it
STARTING_REASON = "registered, not serving answers yet"
INCOMPATIBLE = "incompatible"  # what the gateway reports for a node on another backbone (never queried)
LEFT = "left"
EXTERNAL_CHECK_SECONDS = 1.0


class RegistryError(ValueError):
    """A registry operation that is refused; subclasses map to gRPC status codes."""


class IdentityMismatch(RegistryError):
    """The key presented is not the one bound to the node id, or the id is bound to another source."""


class SourceTaken(RegistryError):
    """Another node id already serves (or is enrolled for) this source."""


class UnknownNode(RegistryError):
    """No entry for this node id."""


class NotEnrolled(RegistryError):
    """A first registration for a node id the admin never enrolled (or whose enrolment was used)."""


class StaleGeneration(RegistryError):
    """A deregistration naming a registration that a newer one of the same node id replaced."""


@dataclass(frozen=True)
class NodeEntry(Registration):
    """One registered node as stored: its registration, its bound key, the registry's bookkeeping and status."""

    public_key: str = ""
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    generation: int = 1
    quarantine: str = ""
    flag: str = ""
    audit_pending: bool = False
    left_at: float = 0.0  # when the node deregistered; 0 while it is in the network
    status: str = HEALTHY

    @property
    def status_reason(self) -> str:
        """Why a node is not healthy, in one line (empty when it is)."""
        return describe_status(self.status, self)


def describe_status(status: str, entry: NodeEntry) -> str:
    """Why a node with `status` is not queried, in one line (empty when it is healthy)."""
    if status == LEFT:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.left_at))
        return f"left the network at {when}" + (f"; still quarantined: {entry.quarantine}" if entry.quarantine else "")
    if status == QUARANTINED:
        return f"quarantined: {entry.quarantine}"
    if status == PENDING_AUDIT:
        return "registered, not yet audited"
    if status == STALE:
        return "no heartbeat within the registry's timeout"
    return ""


def public_status(entry: NodeEntry, backbone_digest: str) -> tuple[str, str]:
    """(status, reason) as clients see them: a node pending its canary audit is just `starting` (no audit state
    in a public answer, so a node cannot learn from one when it is being audited)."""
    status = serving_status(entry, backbone_digest)
    return (STARTING, STARTING_REASON) if status == PENDING_AUDIT else (status, entry.status_reason)


def serving_status(entry: NodeEntry, backbone_digest: str) -> str:
    """The entry's status as a gateway serving `backbone_digest` reports it: `incompatible` on another backbone (unless it left)."""
    return entry.status if entry.backbone_digest == backbone_digest or entry.status == LEFT else INCOMPATIBLE


class Registry:
    """Thread-safe SQLite registry; one connection guarded by a lock (writes are tiny).

    `audit` = True marks every (re-)registration pending until `passed_audit` (the gateway's
    canary audit runs); `policy` is the endpoint policy the validator applies. `create` = False
    refuses a file that does not exist: an admin command with a misspelt path must not start an
    empty registry that no gateway reads.
    """

    def __init__(self, path: str | Path, *, stale_after: float = 20.0, clock: Callable[[], float] = time.time,
                 policy: EndpointPolicy | None = None, audit: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise RegistryError(f"registry {self.path} does not exist (check --registry or the config's `registry:`)")
        self.stale_after = stale_after
        self.clock = clock
        self.policy = policy or EndpointPolicy()
        self.audit = audit
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            prepare(self._db)
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"registry {self.path}: cannot open ({exc})") from None
        except SchemaTooOld as exc:
            raise RegistryError(f"registry {self.path}: {exc}") from None
        self.version = 0
        self._snapshot: tuple[NodeEntry, ...] | None = None
        self._data_version = -1
        self._checked = 0.0
        self._credential_key = self._meta("credential_key", lambda: secrets.token_hex(32))

    def _meta(self, key: str, make: Callable[[], str]) -> str:
        with self._lock, self._db:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row:
                return row[0]
            value = make()
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enrol(self, node_id: str, source: str) -> str:
        """A one-time enrolment token for `node_id` serving `source` (replaces an unused one)."""
        try:
            check_node_id(node_id)
            check_source(source)
        except InvalidRegistration as exc:
            raise RegistryError(str(exc)) from None
        token = secrets.token_urlsafe(32)
        with self._lock, self._db:
            if self._db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone():
                raise RegistryError(f"node id {node_id!r} is registered already; remove it first to enrol it again")
            owner = self._db.execute(
                "SELECT node_id FROM nodes WHERE source = ? UNION SELECT node_id FROM enrolments WHERE source = ? AND node_id != ?",
                (source, source, node_id),
            ).fetchone()
            if owner:
                raise SourceTaken(f"source {source!r} is already served by (or enrolled for) node {owner[0]!r}")
            self._db.execute(
                "INSERT OR REPLACE INTO enrolments (node_id, source, key, created_at) VALUES (?, ?, ?, ?)",
                (node_id, source, identity.enrolment_key(token).hex(), self.clock()),
            )
        return token

    def enrolment(self, node_id: str) -> tuple[str, bytes] | None:
        """(source, HMAC key) of the node id's unused enrolment, or None."""
        with self._lock:
            row = self._db.execute("SELECT source, key FROM enrolments WHERE node_id = ?", (node_id,)).fetchone()
        return (row[0], bytes.fromhex(row[1])) if row else None

    def bound_key(self, node_id: str) -> tuple[str, str] | None:
        """(source, public key hex) bound to a registered node id, or None."""
        with self._lock:
            row = self._db.execute("SELECT source, public_key FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def gateway_credential(self, node_id: str) -> str:
        """The bearer the gateway presents to this node's HeadService (stable across restarts)."""
        return hmac.new(bytes.fromhex(self._credential_key), f"gateway|{node_id}".encode(), "sha256").hexdigest()

    def register(self, registration: Registration, *, public_key: str, enrolment_verified: bool = False) -> NodeEntry:
        """Validates, then adds or refreshes an entry (idempotent per node id).

        A new node id needs an unused enrolment for its source (`enrolment_verified`: the caller
        checked the node's proof of the token); a known one needs the bound key and source.
        """
        registration = validate_registration(registration, self.policy)
        node_id, source = registration.node_id, registration.source
        if len(public_key) != identity.PUBLIC_KEY_HEX_LENGTH:
            raise RegistryError("public_key must be 32 bytes as hex")
        now = self.clock()
        row = {**registration.to_json_values(), "audit_pending": int(self.audit), "last_heartbeat": now, "left_at": 0.0}
        with self._lock, self._db:
            bound = self._db.execute("SELECT public_key, source FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if bound:
                self._check_binding(node_id, source, public_key, bound)
            else:
                self._check_enrolment(node_id, source, enrolment_verified)
            owner = self._db.execute("SELECT node_id FROM nodes WHERE source = ? AND node_id != ?", (source, node_id)).fetchone()
            if owner:
                raise SourceTaken(f"source {source!r} is already served by node {owner[0]!r}")
            if bound:
                assignments = ", ".join(f"{column} = :{column}" for column in row)
                self._db.execute(f"UPDATE nodes SET {assignments}, generation = generation + 1 WHERE node_id = :node_id", row)
            else:
                row.update(public_key=public_key, registered_at=now)
                self._db.execute(f"INSERT INTO nodes ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})", row)
                self._db.execute("DELETE FROM enrolments WHERE node_id = ?", (node_id,))
            self._changed()
        return self.get(node_id)

    @staticmethod
    def _check_binding(node_id: str, source: str, public_key: str, row: tuple) -> None:
        if not hmac.compare_digest(row[0], public_key):
            raise IdentityMismatch(f"node id {node_id!r} is registered by another node (key does not match)")
        if row[1] != source:
            raise IdentityMismatch(f"node id {node_id!r} is enrolled for source {row[1]!r}, not {source!r}")

    def _check_enrolment(self, node_id: str, source: str, verified: bool) -> None:
        row = self._db.execute("SELECT source FROM enrolments WHERE node_id = ?", (node_id,)).fetchone()
        if row is None or not verified:
            raise NotEnrolled(
                f"node id {node_id!r} is not enrolled (the admin runs `attribnet coordinator enrol --node-id {node_id} "
                f"--source {source}` and gives the node the token)"
            )
        if row[0] != source:
            raise IdentityMismatch(f"node id {node_id!r} is enrolled for source {row[0]!r}, not {source!r}")

    def heartbeat(self, node_id: str) -> NodeEntry:
        """Records that the node is alive (its signature was checked by the caller); UnknownNode also once it left."""
        with self._lock, self._db:
            query = "UPDATE nodes SET last_heartbeat = ? WHERE node_id = ? AND left_at = 0"
            if not self._db.execute(query, (self.clock(), node_id)).rowcount:
                raise UnknownNode(f"node id {node_id!r} is not registered (or left: register again)")
            self._changed()
        return self.get(node_id)

    def deregister(self, node_id: str, generation: int) -> NodeEntry:
        """Marks the node as left (its signature was checked by the caller); see the module docstring.

        Only its current registration may leave (StaleGeneration otherwise); leaving twice is no error.
        """
        if generation < 1:
            raise RegistryError("generation must be the one the node's RegisterResponse returned")
        with self._lock, self._db:
            row = self._db.execute("SELECT generation, left_at FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise UnknownNode(f"node id {node_id!r} is not registered")
            if row[0] != generation:
                raise StaleGeneration(f"node id {node_id!r} registered again since (generation {row[0]}, not "
                                      f"{generation}): the newer registration stays")
            if not row[1]:
                self._db.execute("UPDATE nodes SET left_at = ? WHERE node_id = ?", (self.clock(), node_id))
                self._changed()
        return self.get(node_id)

    def _set(self, node_id: str, column: str, value: Any) -> NodeEntry:
        with self._lock, self._db:
            if not self._db.execute(f"UPDATE nodes SET {column} = ? WHERE node_id = ?", (value, node_id)).rowcount:
                raise UnknownNode(f"node id {node_id!r} is not registered")
            self._changed()
        return self.get(node_id)

    def quarantine(self, node_id: str, reason: str) -> NodeEntry:
        """Stops querying the node until the admin clears it; survives re-registration and restarts."""
        return self._set(node_id, "quarantine", reason[:500] or "quarantined")

    def flag(self, node_id: str, reason: str) -> NodeEntry:
        """Marks a node for the admin's attention (it is still queried)."""
        return self._set(node_id, "flag", reason[:500])

    def passed_audit(self, node_id: str, generation: int) -> None:
        """Clears the pending audit of exactly that registration (a newer one is audited again)."""
        with self._lock, self._db:
            self._db.execute("UPDATE nodes SET audit_pending = 0 WHERE node_id = ? AND generation = ?", (node_id, generation))
            self._changed()

    def clear(self, node_id: str) -> NodeEntry:
        """The admin's decision: lifts a quarantine and a flag (the node is audited again when audits are on)."""
        with self._lock, self._db:
            changed = self._db.execute(
                "UPDATE nodes SET quarantine = '', flag = '', audit_pending = ? WHERE node_id = ?", (int(self.audit), node_id)
            ).rowcount
            self._changed()
        if not changed:
            raise UnknownNode(f"node id {node_id!r} is not registered")
        return self.get(node_id)

    def reset_audits(self) -> None:
        """At gateway start: with audits on every node waits for one before it is queried; off, none does."""
        with self._lock, self._db:
            self._db.execute("UPDATE nodes SET audit_pending = ?", (int(self.audit),))
            self._changed()

    def remove(self, node_id: str) -> bool:
        """Deletes an entry and its key binding (the node must be enrolled again); True when it existed."""
        with self._lock, self._db:
            enrolled = self._db.execute("DELETE FROM enrolments WHERE node_id = ?", (node_id,)).rowcount
            removed = self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount + enrolled > 0
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
        """`left`, `quarantined`, `pending_audit`, `stale` (last heartbeat older than `stale_after` at `now`) or `healthy`."""
        if entry.left_at:
            return LEFT
        if entry.quarantine:
            return QUARANTINED
        if entry.audit_pending:
            return PENDING_AUDIT
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

    def _entry(self, row: sqlite3.Row) -> NodeEntry:
        values = dict(row)
        bookkeeping = {name: values[name] for name in _BOOKKEEPING}
        entry = NodeEntry.from_json_values(values, **bookkeeping, audit_pending=bool(values["audit_pending"]))
        return dataclasses.replace(entry, status=self.status_at(entry, self.clock()))


_BOOKKEEPING = ("public_key", "registered_at", "last_heartbeat", "generation", "quarantine", "flag", "left_at")
_COLUMNS = ", ".join((*REGISTRATION_COLUMNS, *_BOOKKEEPING, "audit_pending"))

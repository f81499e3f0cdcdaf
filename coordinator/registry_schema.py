"""The registry's SQLite schema, and how a file written by an earlier version is brought up to it.

Kept apart from `coordinator.registry` (what the registry does) because it only says what the
file holds: version 2 added per-node identity (earlier files are refused: their nodes must be
enrolled again), version 3 `left_at` (when a node deregistered; 0 while it is in the network),
added in place to a version-2 file.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 3
IDENTITY_VERSION = 2  # the first version with per-node keys; older files cannot be migrated

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    backbone_digest TEXT NOT NULL,
    backbone_version TEXT NOT NULL DEFAULT '',
    head_digest TEXT NOT NULL,
    calibration TEXT NOT NULL,
    threshold REAL NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    public_key TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1,
    quarantine TEXT NOT NULL DEFAULT '',
    flag TEXT NOT NULL DEFAULT '',
    audit_pending INTEGER NOT NULL DEFAULT 0,
    left_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS enrolments (
    node_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# columns added after IDENTITY_VERSION, with their declarations: added in place to an older file
ADDED_COLUMNS = {
    "left_at": "REAL NOT NULL DEFAULT 0",  # version 3
}


class SchemaTooOld(ValueError):
    """A registry file written before per-node identity: it cannot be brought up to date."""


def prepare(db: sqlite3.Connection) -> None:
    """Creates the tables of a new file or adds the missing columns to an older one, then stamps the version.

    Each step checks what the file holds, so a migration interrupted half-way is finished on the next open.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "nodes" in tables and version < IDENTITY_VERSION:
        raise SchemaTooOld(
            f"written before per-node identity (schema {version}, need {SCHEMA_VERSION}); move it aside and enrol the nodes again"
        )
    if "nodes" in tables:
        columns = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
        for column, declaration in ADDED_COLUMNS.items():
            if column not in columns:
                db.execute(f"ALTER TABLE nodes ADD COLUMN {column} {declaration}")
    db.executescript(SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.commit()

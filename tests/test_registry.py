"""The SQLite node registry: idempotent registration, identity binding, staleness, durability, CLI."""

from __future__ import annotations

import json

import pytest

from coordinator.registry import IdentityMismatch, Registry, RegistryError, SourceTaken, UnknownNode


class Clock:
    """A settable time source, so staleness is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def register(registry: Registry, node_id: str = "n1", source: str = "progan", secret: str = "s1", **extra):
    values = dict(
        endpoint="127.0.0.1:5000", backbone_digest="b" * 64, head_digest="h" * 64,
        calibration={"method": "platt", "a": 1.5, "b": -0.25}, threshold=0.6, metrics={"auroc": 0.9},
    )
    values.update(extra)
    return registry.register(node_id=node_id, source=source, secret=secret, **values)


def test_register_is_idempotent_and_updates_the_entry(tmp_path):
    clock = Clock()
    registry = Registry(tmp_path / "r.sqlite", stale_after=10, clock=clock)
    first = register(registry)
    clock.now += 5
    second = register(registry, endpoint="127.0.0.1:6000")
    assert second.generation == first.generation + 1
    assert second.registered_at == first.registered_at and second.last_heartbeat == clock.now
    assert [e.endpoint for e in registry.list()] == ["127.0.0.1:6000"]
    assert second.calibration == {"method": "platt", "a": 1.5, "b": -0.25} and second.metrics == {"auroc": 0.9}


def test_one_node_cannot_overwrite_another(tmp_path):
    registry = Registry(tmp_path / "r.sqlite")
    register(registry, "n1", "progan", "s1")
    with pytest.raises(IdentityMismatch):
        register(registry, "n1", "progan", "someone-else", endpoint="10.0.0.9:1")
    with pytest.raises(IdentityMismatch):
        registry.heartbeat("n1", "someone-else")
    with pytest.raises(SourceTaken, match="n1"):
        register(registry, "n2", "progan", "s2")
    with pytest.raises(UnknownNode):
        registry.heartbeat("n3", "s3")
    with pytest.raises(RegistryError, match="secret"):
        register(registry, "n4", "stylegan", "")
    assert registry.get("n1").endpoint == "127.0.0.1:5000"


def test_stale_after_timeout_and_healthy_after_heartbeat(tmp_path):
    clock = Clock()
    registry = Registry(tmp_path / "r.sqlite", stale_after=10, clock=clock)
    register(registry)
    assert registry.get("n1").status == "healthy"
    clock.now += 11
    assert registry.get("n1").status == "stale"
    registry.heartbeat("n1", "s1")
    assert registry.get("n1").status == "healthy"


def test_survives_reopen_and_remove_frees_the_source(tmp_path):
    path = tmp_path / "state" / "r.sqlite"
    registry = Registry(path)
    register(registry, "n1", "progan", "s1")
    register(registry, "n2", "stylegan", "s2")
    registry.close()
    reopened = Registry(path)
    assert [(e.node_id, e.source) for e in reopened.list()] == [("n1", "progan"), ("n2", "stylegan")]
    with pytest.raises(IdentityMismatch):
        register(reopened, "n1", "progan", "s-other")  # the binding survived too
    assert reopened.remove("n1") and not reopened.remove("n1")
    register(reopened, "n3", "progan", "s3")
    assert {e.node_id for e in reopened.list()} == {"n2", "n3"}


def test_corrupt_registry_file_is_a_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match="cannot open"):
        Registry(path)


def test_registry_cli_lists_and_removes(tmp_path, capsys):
    from attribnet.cli import main

    path = tmp_path / "r.sqlite"
    registry = Registry(path)
    register(registry, "n1", "progan", "s1")
    register(registry, "n2", "stylegan", "s2")
    registry.close()
    assert main(["coordinator", "registry", "list", "--registry", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["node_id"], r["source"], r["status"]) for r in rows] == [("n1", "progan", "healthy"), ("n2", "stylegan", "healthy")]
    assert main(["coordinator", "registry", "remove", "n1", "--registry", str(path)]) == 0
    assert main(["coordinator", "registry", "list", "--registry", str(path)]) == 0
    out = capsys.readouterr().out
    assert "n2" in out and "stylegan" in out and "n1 " not in out
    assert main(["coordinator", "registry", "remove", "n1", "--registry", str(path)]) == 2
    assert "not in" in capsys.readouterr().err


def test_reads_come_from_a_snapshot_renewed_on_every_change(tmp_path):
    """The gateway reads the registry per batch: no SQL per read, yet every change is seen."""
    from tests.network_support import wait_until

    clock = Clock()
    registry = Registry(tmp_path / "r.sqlite", stale_after=10, clock=clock)
    register(registry)
    assert [e.node_id for e in registry.list()] == ["n1"]
    statements: list[str] = []
    registry._db.set_trace_callback(statements.append)
    for _ in range(100):
        snapshot = registry.snapshot()
    assert snapshot is registry.snapshot() and len(statements) <= 1, statements  # at most one data_version check
    clock.now += 11
    assert registry.list()[0].status == "stale"  # status is derived at read time, not cached
    version = registry.version
    register(registry, node_id="n2", source="stylegan", secret="s2")
    assert registry.version > version and [e.node_id for e in registry.list()] == ["n1", "n2"]
    other = Registry(tmp_path / "r.sqlite")  # another process, e.g. `attribnet coordinator registry remove`
    assert other.remove("n1")
    other.close()
    wait_until(lambda: [e.node_id for e in registry.list()] == ["n2"], 10, "the external removal to be seen")

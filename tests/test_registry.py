"""The SQLite node registry: enrolment, idempotent registration, key binding, validation, staleness,
quarantine, durability, CLI."""

from __future__ import annotations

import json

import pytest

from coordinator.registry import IdentityMismatch, NotEnrolled, Registry, RegistryError, SourceTaken, UnknownNode
from shared_backbone.protocol import identity
from shared_backbone.protocol.registration import Registration


def key(secret: str) -> str:
    return identity.public_key_hex(identity.node_key(secret))


class Clock:
    """A settable time source, so staleness is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def register(registry: Registry, node_id: str = "n1", source: str = "progan", secret: str = "s1", **extra):
    """Registers like admission does after checking proofs: enrols a new node id first."""
    values = dict(
        endpoint="127.0.0.1:5000", backbone_digest="b" * 64, head_digest="a" * 64,
        calibration={"method": "platt", "a": 1.5, "b": -0.25}, threshold=0.6, metrics={"auroc": 0.9},
    )
    values.update(extra)
    fresh = registry.bound_key(node_id) is None
    if fresh and registry.enrolment(node_id) is None:
        registry.enrol(node_id, source)
    record = Registration.from_fields({"node_id": node_id, "source": source, **values})
    return registry.register(record, public_key=key(secret), enrolment_verified=fresh)


def test_register_is_idempotent_and_updates_the_entry(tmp_path):
    clock = Clock()
    registry = Registry(tmp_path / "r.sqlite", stale_after=10, clock=clock)
    first = register(registry)
    clock.now += 5
    second = register(registry, endpoint="127.0.0.1:6000")
    assert second.generation == first.generation + 1
    assert second.registered_at == first.registered_at and second.last_heartbeat == clock.now
    assert [e.endpoint for e in registry.list()] == ["127.0.0.1:6000"]
    assert second.calibration.to_dict() == {"method": "platt", "a": 1.5, "b": -0.25, "positive_scores": [], "typicality_scores": []}
    assert second.metrics == {"auroc": 0.9}


def test_one_node_cannot_overwrite_another(tmp_path):
    registry = Registry(tmp_path / "r.sqlite")
    register(registry, "n1", "progan", "s1")
    with pytest.raises(IdentityMismatch):
        register(registry, "n1", "progan", "someone-else", endpoint="10.0.0.9:1")
    with pytest.raises(SourceTaken, match="n1"):
        registry.enrol("n2", "progan")
    with pytest.raises(UnknownNode):
        registry.heartbeat("n3")
    with pytest.raises(NotEnrolled, match="attribnet coordinator enrol"):
        registry.register(Registration.from_fields(dict(
            node_id="n5", source="other", endpoint="127.0.0.1:1", backbone_digest="b" * 64, head_digest="a" * 64,
            calibration={"method": "identity", "a": 1, "b": 0}, threshold=0.5)), public_key=key("s5"))
    registry.enrol("n6", "stylegan")
    with pytest.raises(IdentityMismatch, match="enrolled for source 'stylegan'"):
        registry.register(Registration.from_fields(dict(
            node_id="n6", source="biggan", endpoint="127.0.0.1:1", backbone_digest="b" * 64, head_digest="a" * 64,
            calibration={"method": "identity", "a": 1, "b": 0}, threshold=0.5)), public_key=key("s6"), enrolment_verified=True)
    assert registry.get("n1").endpoint == "127.0.0.1:5000"


def test_stale_after_timeout_and_healthy_after_heartbeat(tmp_path):
    clock = Clock()
    registry = Registry(tmp_path / "r.sqlite", stale_after=10, clock=clock)
    register(registry)
    assert registry.get("n1").status == "healthy"
    clock.now += 11
    assert registry.get("n1").status == "stale"
    registry.heartbeat("n1")
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


def test_quarantine_is_sticky_until_the_admin_clears_it(tmp_path, capsys):
    from attribnet.cli import main

    path = tmp_path / "r.sqlite"
    registry = Registry(path)
    register(registry, "n1", "progan", "s1")
    registry.quarantine("n1", "canary audit: claimed 24 of 24 canary images of other sources")
    register(registry, "n1", "progan", "s1", endpoint="127.0.0.1:6000")  # re-registering does not lift it
    assert registry.get("n1").status == "quarantined" and "claimed 24" in registry.get("n1").status_reason
    registry.close()
    assert main(["coordinator", "registry", "list", "--registry", str(path)]) == 0
    assert "quarantined" in capsys.readouterr().out
    assert main(["coordinator", "registry", "clear", "n1", "--registry", str(path)]) == 0
    reopened = Registry(path)
    assert reopened.get("n1").status == "healthy"
    reopened.close()


def test_old_registry_files_are_refused_with_a_reason(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE nodes (node_id TEXT PRIMARY KEY, secret_sha256 TEXT)")
    db.commit()
    db.close()
    with pytest.raises(RegistryError, match="before per-node identity"):
        Registry(path)


def test_enrol_cli_writes_a_private_token_file(tmp_path, capsys):
    import stat

    from attribnet.cli import main

    path, out = tmp_path / "r.sqlite", tmp_path / "tconv_a.token"
    assert main(["coordinator", "enrol", "--source", "tconv_a", "--registry", str(path), "--out", str(out), "--new-registry"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    registry = Registry(path)
    source, stored = registry.enrolment("tconv_a")
    assert source == "tconv_a" and stored == identity.enrolment_key(out.read_text().strip())
    registry.close()
    assert main(["coordinator", "enrol", "--source", "tconv_a", "--registry", str(path), "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["coordinator", "enrol", "--source", "real", "--registry", str(path), "--out", str(tmp_path / "x")]) == 2
    assert "reserved" in capsys.readouterr().err


def test_a_challenge_is_used_once_by_its_node_within_its_time_to_live():
    """gRPC challenges live CHALLENGE_TTL; a Flower round's live as long as the round (nodes train first)."""
    from coordinator.admission import CHALLENGE_TTL, ChallengeBook, StaleChallenge

    clock = Clock()
    book = ChallengeBook(clock)
    short, long_lived, other = book.issue("n1"), book.issue("n1", ttl=900 + CHALLENGE_TTL), book.issue("n2")
    clock.now += CHALLENGE_TTL + 1
    with pytest.raises(StaleChallenge):
        book.take(short, "n1")
    with pytest.raises(StaleChallenge):
        book.take(other, "n1")  # issued to another node id (and used up by the attempt)
    book.take(long_lived, "n1")
    with pytest.raises(StaleChallenge):
        book.take(long_lived, "n1")  # single use


def test_admin_commands_never_start_a_registry_at_a_misspelt_path(tmp_path, capsys):
    """A typo in --registry is an error naming the path, not a new empty database no gateway reads."""
    from attribnet.cli import main

    missing = tmp_path / "typo" / "registry.sqlite"
    for argv in (["coordinator", "registry", "list", "--registry", str(missing)],
                 ["coordinator", "registry", "remove", "n1", "--registry", str(missing)],
                 ["coordinator", "enrol", "--source", "tconv_a", "--registry", str(missing), "--out", str(tmp_path / "t")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and str(missing) in err and err.count("\n") == 1
    assert not missing.exists() and not missing.parent.exists() and not (tmp_path / "t").exists()


def test_a_node_that_leaves_is_kept_as_left_until_it_registers_again(tmp_path):
    """Only the current registration may leave; a left node is not heartbeated back, only registered back."""
    from coordinator.registry import StaleGeneration

    clock = Clock()
    registry = Registry(tmp_path / "r.sqlite", stale_after=10, clock=clock)
    first = register(registry)
    second = register(registry)  # a newer process of the same node
    with pytest.raises(StaleGeneration, match="registered again since"):
        registry.deregister("n1", first.generation)
    with pytest.raises(UnknownNode):
        registry.deregister("n2", 1)
    with pytest.raises(RegistryError, match="generation"):
        registry.deregister("n1", 0)
    assert registry.get("n1").status == "healthy"
    clock.now += 1
    left = registry.deregister("n1", second.generation)
    assert left.status == "left" and left.left_at == clock.now and left.status_reason.startswith("left the network at")
    assert registry.deregister("n1", second.generation).left_at == left.left_at  # leaving twice is no error
    with pytest.raises(UnknownNode, match="left"):
        registry.heartbeat("n1")
    clock.now += 60  # a node that left never turns stale: it is out of the network
    assert registry.get("n1").status == "left" and registry.bound_key("n1") == ("progan", key("s1"))
    back = register(registry)  # its bound key, no new enrolment
    assert back.status == "healthy" and back.left_at == 0 and back.generation == second.generation + 1
    registry.close()


def test_a_registry_file_of_schema_2_gains_left_at_in_place(tmp_path):
    """A registry written before Deregister opens with its nodes, keys and quarantines, and can record a leave."""
    import sqlite3

    path = tmp_path / "r.sqlite"
    registry = Registry(path)
    register(registry)
    registry.quarantine("n1", "canary audit: claimed everything")
    registry.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE nodes DROP COLUMN left_at")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    reopened = Registry(path)
    entry = reopened.get("n1")
    assert entry.status == "quarantined" and entry.left_at == 0 and entry.public_key == key("s1")
    assert reopened.deregister("n1", entry.generation).status == "left"
    reopened.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3

"""A stopped node leaves the registry (signed `RegistryService.Deregister`), and nobody else can make it leave.

A real gateway on loopback with a real SQLite registry and real node servers (in-process, and one
`attribnet node serve` process stopped with SIGINT). The gateway's `stale_after` is long, so a node
that did not leave would stay "healthy", be dialled and listed missing: every check below fails then.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.network_support import (cli_process, free_port, make_bundle, make_head, node_config, png_bytes, register_request,
    register_signed, registry_stub, signed_metadata, status_code, stop_process, wait_until, write_enrolment, write_yaml)

LEAVE_BOUND = 10.0  # seconds a stopped node may take to be out of the registry (the node gives itself 3)


@dataclass
class Gateway:
    root: Path
    bundle: object
    coordinator: object
    victim: object  # a real node server ("alpha") that forged calls try to remove
    keypair: tuple

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    @property
    def registry(self):
        return self.coordinator.registry


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, keypair):
    from node.server import start_node
    from tests.network_support import start_gateway

    root = tmp_path_factory.mktemp("deregister")
    bundle = make_bundle(root / "bundle", *keypair)
    coordinator = start_gateway(bundle, keypair[1], root / "registry.sqlite", node_timeout=2.0, heartbeat_interval=0.3,
                                stale_after=600.0)
    make_head(root / "alpha", bundle, "alpha", seed=11)
    write_enrolment(coordinator.registry, root / "alpha", "alpha", "alpha")
    victim = start_node(node_config(root, bundle, "alpha", coordinator.port, keypair))
    wait_until(lambda: _status(coordinator.registry, "alpha") == "healthy", 30, "alpha to register")
    yield Gateway(root, bundle, coordinator, victim, keypair)
    victim.stop(0.2)
    coordinator.stop(0.2)


def _status(registry, node_id: str) -> str:
    from coordinator.registry import UnknownNode

    try:
        return registry.get(node_id).status
    except UnknownNode:
        return ""


def _answer(gateway: Gateway):
    """One attribution of a random image: (sources that scored, {missing node: reason})."""
    from shared_backbone.runtime.gateway_client import AttributionClient

    with AttributionClient(gateway.target, timeout=20) as client:
        result = client.attribute([png_bytes(np.random.default_rng(3))])[0]
    return sorted(result.scores), dict(result.missing_reasons)


def _deregister(stub, node_id: str, generation: int, secret: str):
    from shared_backbone.protocol import identity
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    request = pb.DeregisterRequest(node_id=node_id, generation=generation)
    metadata = signed_metadata(stub, request, secret, identity.DEREGISTER, node_id=node_id)
    return stub.Deregister(request, metadata=metadata, timeout=5)


def _secret(gateway: Gateway, source: str) -> str:
    from node import state

    return state.node_secret(node_config(gateway.root, gateway.bundle, source, gateway.coordinator.port, gateway.keypair))


def _registered(gateway: Gateway, process, log_path: Path, node_id: str) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"node process exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    return _status(gateway.registry, node_id) == "healthy"


def _registry_list(gateway: Gateway, capsys) -> dict[str, dict]:
    """`attribnet coordinator registry list --json` on the gateway's registry file, by node id."""
    from attribnet.cli import main

    capsys.readouterr()
    assert main(["coordinator", "registry", "list", "--registry", str(gateway.root / "registry.sqlite"), "--json"]) == 0
    return {row["node_id"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}


def test_node_serve_stopped_with_sigint_leaves_the_registry(gateway, capsys):
    """The real command: SIGINT -> Deregister -> `left` in `registry list`, not missing from answers; exit 0."""
    state = gateway.root / "beta"
    make_head(state, gateway.bundle, "beta", seed=12)
    write_enrolment(gateway.registry, state, "beta", "beta")
    config = write_yaml(gateway.root / "beta.yaml", {
        "source": "beta", "backbone": str(gateway.bundle.path), "public_key": str(gateway.keypair[1]), "state_dir": str(state),
        "serve": {"host": "127.0.0.1", "port": free_port(), "coordinator": gateway.target, "heartbeat_interval": 0.3,
                  "rpc_timeout": 2.0, "max_backoff": 1.0},
    })
    log_path = gateway.root / "beta.log"
    process = cli_process(["node", "serve", "--config", str(config)], log_path)
    try:
        wait_until(lambda: _registered(gateway, process, log_path, "beta"), 120, "the node process to register")
        assert _answer(gateway) == (["alpha", "beta"], {})
        started = time.monotonic()
        assert stop_process(process, timeout=LEAVE_BOUND, sig=signal.SIGINT) == 0, log_path.read_text()[-3000:]
        wait_until(lambda: _status(gateway.registry, "beta") == "left", LEAVE_BOUND, "beta to leave")
        assert time.monotonic() - started < LEAVE_BOUND
    finally:
        stop_process(process)
    assert "left the coordinator's registry" in log_path.read_text()
    listed = _registry_list(gateway, capsys)
    assert listed["beta"]["status"] == "left" and listed["beta"]["status_reason"].startswith("left the network at")
    assert listed["alpha"]["status"] == "healthy"
    assert _answer(gateway) == (["alpha"], {})  # beta is neither dialled nor listed missing
    gateway.registry.remove("beta")


def test_a_stopped_node_leaves_and_comes_back_by_registering_again(gateway):
    """The in-process stop path (tests, the demo's nodes) leaves too; a restart needs no new enrolment."""
    from node.server import start_node

    make_head(gateway.root / "gamma", gateway.bundle, "gamma", seed=13)
    write_enrolment(gateway.registry, gateway.root / "gamma", "gamma", "gamma")
    config = node_config(gateway.root, gateway.bundle, "gamma", gateway.coordinator.port, gateway.keypair)
    node = start_node(config)
    wait_until(lambda: _status(gateway.registry, "gamma") == "healthy", 30, "gamma to register")
    node.stop(0.2)
    assert _status(gateway.registry, "gamma") == "left"  # before stop() returned
    assert _answer(gateway) == (["alpha"], {})
    node = start_node(config)  # its one-time token was used up: it comes back on its bound key
    try:
        wait_until(lambda: _status(gateway.registry, "gamma") == "healthy", 30, "gamma to register again")
        assert _answer(gateway) == (["alpha", "gamma"], {})
    finally:
        node.stop(0.2)
    gateway.registry.remove("gamma")


def test_forged_deregistrations_are_refused_and_the_gateway_keeps_serving(gateway):
    from shared_backbone.protocol import identity
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    channel, stub = registry_stub(gateway.target)
    generation = gateway.registry.get("alpha").generation
    request = pb.DeregisterRequest(node_id="alpha", generation=generation)
    alpha_key = identity.public_key_hex(identity.node_key(_secret(gateway, "alpha")))
    try:
        # another node's key, signing for alpha's id
        assert status_code(lambda: _deregister(stub, "alpha", generation, "evil-secret")) == grpc.StatusCode.PERMISSION_DENIED
        # alpha's public key presented, the signature made with another key
        forged = dict(signed_metadata(stub, request, "evil-secret", identity.DEREGISTER, node_id="alpha"))
        forged[rpc.PUBLIC_KEY_METADATA] = alpha_key
        assert status_code(lambda: stub.Deregister(request, metadata=tuple(forged.items()), timeout=5)) == \
            grpc.StatusCode.UNAUTHENTICATED
        # alpha's own signature, but over a heartbeat (another purpose) or another generation
        secret = _secret(gateway, "alpha")
        heartbeat = signed_metadata(stub, request, secret, identity.HEARTBEAT, node_id="alpha")
        assert status_code(lambda: stub.Deregister(request, metadata=heartbeat, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        other = signed_metadata(stub, pb.DeregisterRequest(node_id="alpha", generation=generation + 1), secret,
                                identity.DEREGISTER, node_id="alpha")
        assert status_code(lambda: stub.Deregister(request, metadata=other, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        # a signed call's challenge cannot be replayed
        wrong = pb.DeregisterRequest(node_id="alpha", generation=generation + 1)
        once = signed_metadata(stub, wrong, secret, identity.DEREGISTER, node_id="alpha")
        assert status_code(lambda: stub.Deregister(wrong, metadata=once, timeout=5)) == grpc.StatusCode.FAILED_PRECONDITION
        assert status_code(lambda: stub.Deregister(wrong, metadata=once, timeout=5)) == grpc.StatusCode.ABORTED
        assert status_code(lambda: stub.Deregister(request, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED  # unsigned
        assert status_code(lambda: _deregister(stub, "nobody", 1, "evil-secret")) == grpc.StatusCode.NOT_FOUND
        assert status_code(lambda: _deregister(stub, "alpha", 0, secret)) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()
    assert _status(gateway.registry, "alpha") == "healthy"
    assert gateway.registry.get("alpha").generation == generation
    assert _answer(gateway) == (["alpha"], {})


def test_an_older_process_cannot_remove_the_newer_registration(gateway, caplog):
    """Process A registered; process B of the same node registered since: A's leave is refused, B stays served."""
    from node.server import start_node

    make_head(gateway.root / "delta", gateway.bundle, "delta", seed=14)
    write_enrolment(gateway.registry, gateway.root / "delta", "delta", "delta")
    config = node_config(gateway.root, gateway.bundle, "delta", gateway.coordinator.port, gateway.keypair)
    older = start_node(config)
    wait_until(lambda: older.registrar.generation, 30, "the older process to register")
    newer = start_node(config)
    try:
        wait_until(lambda: newer.registrar.generation > older.registrar.generation, 30, "the newer process to register")
        assert gateway.registry.get("delta").generation == newer.registrar.generation
        channel, stub = registry_stub(gateway.target)
        try:
            code = status_code(lambda: _deregister(stub, "delta", older.registrar.generation, _secret(gateway, "delta")))
        finally:
            channel.close()
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        with caplog.at_level("WARNING", logger="node.registrar"):
            older.stop(0.2)
        assert "FAILED_PRECONDITION" in caplog.text and "registered again since" in caplog.text
        assert _status(gateway.registry, "delta") == "healthy"
        assert gateway.registry.get("delta").endpoint.endswith(f":{newer.port}")
        assert _answer(gateway) == (["alpha", "delta"], {})
    finally:
        newer.stop(0.2)
    assert _status(gateway.registry, "delta") == "left"
    gateway.registry.remove("delta")


def test_a_quarantined_node_cannot_escape_quarantine_by_leaving_and_registering_again(gateway, capsys):
    registry = gateway.registry
    channel, stub = registry_stub(gateway.target)
    token = registry.enrol("evil", "evil")
    try:
        first = register_signed(stub, register_request(gateway.bundle, "evil", "evil"), "evil-secret", token)
        registry.quarantine("evil", "canary audit: claimed 24 of 24 canary images of other sources")
        assert _deregister(stub, "evil", first.generation, "evil-secret").status == "left"
        entry = registry.get("evil")
        assert entry.quarantine.startswith("canary audit") and "still quarantined: canary audit" in entry.status_reason
        assert _registry_list(gateway, capsys)["evil"]["status"] == "left"
        assert _answer(gateway) == (["alpha"], {})  # out of the network: not listed missing
        again = register_signed(stub, register_request(gateway.bundle, "evil", "evil"), "evil-secret")  # no token needed
        assert again.status == "quarantined" and again.generation == first.generation + 1
        listed = _registry_list(gateway, capsys)["evil"]
        assert listed["status"] == "quarantined" and "claimed 24" in listed["status_reason"]
        scored, missing = _answer(gateway)
        assert scored == ["alpha"] and missing["evil"].startswith("quarantined: canary audit")
    finally:
        registry.remove("evil")
        channel.close()

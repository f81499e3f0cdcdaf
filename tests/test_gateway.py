"""The coordinator's gateway and registry service with real in-process gRPC servers on loopback.

Three real node servers (untrained heads, distinct seeds and calibrations) register with a real
coordinator; answers are checked against `OfflineAttributor` on the same bundle and heads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from shared_backbone.model.rule import REASONS
from tests.network_support import (IMAGE_SIZE, Net, make_bundle, make_head, node_config, png_bytes, register_request,
    register_signed, registry_stub, signed_metadata, status_code, wait_until, write_certificates, write_enrolment)

QUERY_TOKEN = "query-secret"
SOURCES = ("alpha", "beta", "gamma")
MAX_PIXELS = 64 * 64
MAX_IMAGES = 8
NO_AUDIT = {"enabled": False}  # random synthetic heads, no reference set: the canary audit is tested in test_trust


@pytest.fixture(scope="module")
def net(tmp_path_factory, keypair):
    from coordinator.config import AuditConfig, CoordinatorConfig, GatewayConfig
    from coordinator.gateway.server import start_coordinator
    from node.server import start_node

    root = tmp_path_factory.mktemp("gateway")
    bundle = make_bundle(root / "bundle", *keypair)
    (root / "query.token").write_text(QUERY_TOKEN + "\n")
    config = CoordinatorConfig(
        bundle=str(bundle.path),
        public_key=str(keypair[1]),
        registry=str(root / "registry.sqlite"),
        gateway=GatewayConfig(
            host="127.0.0.1", port=0, query_token_file=str(root / "query.token"),
            max_pixels=MAX_PIXELS, max_images=MAX_IMAGES, node_timeout=2.0, heartbeat_interval=0.3,
            stale_after=2.0, batch_window_ms=50.0, audit=AuditConfig(**NO_AUDIT),
        ),
    )
    coordinator = start_coordinator(config)
    nodes, configs = {}, {}
    for i, source in enumerate(SOURCES):
        make_head(root / source, bundle, source, seed=100 + i, a=1.0 + 0.7 * i, b=0.3 * i - 0.3, threshold=0.4 + 0.05 * i,
                  typicality=source == "alpha")
        write_enrolment(coordinator.registry, root / source, source, source)
        configs[source] = node_config(root, bundle, source, coordinator.port, keypair)
        nodes[source] = start_node(configs[source])
    wait_until(
        lambda: sum(e.status == "healthy" for e in coordinator.registry.list()) == len(SOURCES), 30, "3 healthy nodes"
    )
    net = Net(root, bundle, coordinator, nodes, f"127.0.0.1:{coordinator.port}", configs)
    yield net
    for node in net.nodes.values():
        node.stop(0.5)
    coordinator.stop(0.5)


@pytest.fixture(scope="module")
def offline(net):
    from shared_backbone.model.attributor import OfflineAttributor
    from shared_backbone.model.heads import load_head

    heads = [load_head(net.root / source / "head", net.bundle) for source in SOURCES]
    return OfflineAttributor(net.bundle, heads)


def client(net, token=QUERY_TOKEN, timeout=10.0):
    from shared_backbone.runtime.gateway_client import AttributionClient

    return AttributionClient(net.target, token=token, timeout=timeout)


def test_answers_match_offline_attributor(net, offline):
    from shared_backbone.model.preprocessing import preprocess

    rng = np.random.default_rng(0)
    images = [png_bytes(rng) for _ in range(6)] + [png_bytes(rng, 48, "JPEG")]
    with client(net) as c:
        results = c.attribute(images)
    expected = offline.attribute(np.stack([preprocess(data, net.bundle.input_spec) for data in images]))
    assert len(results) == len(images)
    for i, (got, want) in enumerate(zip(results, expected)):
        assert got.index == i
        assert got.attribution == want.attribution
        assert got.reason == want.reason and got.reason in REASONS
        assert got.fake_score == pytest.approx(want.fake_score, abs=1e-6)
        assert set(got.scores) == set(SOURCES)
        for source in SOURCES:
            assert got.scores[source] == pytest.approx(want.calibrated[source], abs=1e-6)
            assert got.raw_scores[source] == pytest.approx(want.raw[source], abs=1e-6)
        assert set(got.typicality) == set(got.typicality_p_values) == {"alpha"}  # the one head with a typicality model
        assert got.typicality["alpha"] == pytest.approx(want.typicality["alpha"], abs=1e-6)
        assert got.typicality_p_values == pytest.approx(want.typicality_p_values)
        assert got.out_of_scope == ""
        assert got.missing_nodes == []
        assert got.backbone_digest == net.bundle.digest and got.backbone_version == net.bundle.version
    # the calibrations differ per head, so calibrated and raw scores really differ
    assert any(abs(r.scores["gamma"] - r.raw_scores["gamma"]) > 1e-3 for r in results)


def test_images_too_small_to_judge_are_out_of_scope_and_the_others_answered(net, offline):
    from shared_backbone.model.preprocessing import preprocess

    rng = np.random.default_rng(5)
    wide = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 64, 3), dtype=np.uint8)).save(wide, format="PNG")
    images = [png_bytes(rng, 16), png_bytes(rng), wide.getvalue(), png_bytes(rng, 40, "JPEG")]
    with client(net) as c:
        results = c.attribute(images)
    assert [r.index for r in results] == [0, 1, 2, 3]
    for small, size in ((results[0], "16x16"), (results[2], "64x20")):
        assert small.attribution == "unknown" and "too small to judge" in small.out_of_scope and size in small.out_of_scope
        assert small.scores == {} and small.prediction_set == [] and small.reason == "out_of_scope"
    expected = offline.attribute(np.stack([preprocess(images[i], net.bundle.input_spec) for i in (1, 3)]))
    for got, want in zip((results[1], results[3]), expected):
        assert got.out_of_scope == "" and got.attribution == want.attribution
        assert got.scores == pytest.approx(want.calibrated, abs=1e-6)
    with client(net) as c:  # a request of small images only never reaches the trunk
        only = c.attribute([png_bytes(rng, 8)])
    assert only[0].attribution == "unknown" and only[0].out_of_scope


def _bad(net, images, fragment):
    from shared_backbone.runtime.gateway_client import GatewayError

    with client(net) as c, pytest.raises(GatewayError) as info:
        c.attribute(images)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value
    assert fragment in info.value.details, info.value.details
    return info.value.details


def test_bad_images_are_invalid_argument_and_server_keeps_serving(net):
    rng = np.random.default_rng(1)
    good = png_bytes(rng)
    big = io.BytesIO()
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(big, format="PNG")
    assert "image 1: empty" in _bad(net, [good, b""], "image 1:")
    assert "image 0: corrupt" in _bad(net, [good[: len(good) // 2], good], "image 0:")
    assert "not a recognised image" in _bad(net, [good, good, b"GIF? no, plain text"], "image 2:")
    assert "above the limit" in _bad(net, [good, big.getvalue()], "image 1:")
    _bad(net, [], "no images")
    _bad(net, [good] * (MAX_IMAGES + 1), f"limit is {MAX_IMAGES}")
    with client(net) as c:
        assert len(c.attribute([good])) == 1
        assert c.health() == "SERVING"


def test_query_token_is_required(net):
    from shared_backbone.runtime.gateway_client import GatewayError

    for token in (None, "wrong"):
        with client(net, token=token) as c, pytest.raises(GatewayError) as info:
            c.attribute([png_bytes(np.random.default_rng(2))])
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with client(net, token=None) as c:
        assert c.health() == "SERVING"  # health stays open for probes


def test_list_sources_shows_registered_nodes(net):
    with client(net) as c:
        sources = c.list_sources()
    by_source = {s["source"]: s for s in sources}
    assert sorted(by_source) == list(SOURCES)
    for source, info in by_source.items():
        head = net.nodes[source]
        assert info["status"] == "healthy" and info["status_reason"] == ""
        assert info["backbone_digest"] == net.bundle.digest
        assert "endpoint" not in info  # node endpoints are the admin's, never shown to query clients
        assert net.coordinator.registry.get(source).endpoint == f"127.0.0.1:{head.port}"
        assert not {"calibration", "threshold", "metrics"} & set(info)  # how to outrank others: the admin's only
        assert net.coordinator.registry.get(source).calibration.method == "platt"


def test_heatmap_png_per_image(net):
    from shared_backbone.model.heatmaps import DISPLAY_SIDE

    rng = np.random.default_rng(3)
    with client(net) as c:
        results = c.attribute([png_bytes(rng), png_bytes(rng)], heatmap=True)
        plain = c.attribute([png_bytes(rng)])
    for result in results:
        image = Image.open(io.BytesIO(result.heatmap_png))
        side = IMAGE_SIZE * -(-DISPLAY_SIDE // IMAGE_SIZE)  # enlarged to be looked at (nearest neighbour)
        assert image.format == "PNG" and image.size == (side, side) and side >= DISPLAY_SIDE
    assert plain[0].heatmap_png == b""


def score_calls(node) -> float:
    """Score calls a node server answered OK, from its own Prometheus registry."""
    from shared_backbone.runtime.prometheus import REQUESTS

    value = node.metrics.registry.get_sample_value(f"{REQUESTS}_total", {"method": "HeadService/Score", "code": "OK"})
    return value or 0.0


def test_concurrent_requests_share_trunk_runs(net, offline):
    from shared_backbone.model.preprocessing import preprocess

    rng = np.random.default_rng(4)
    requests = [[png_bytes(rng) for _ in range(2)] for _ in range(6)]
    before = net.coordinator.pipeline.runs
    scored = {source: score_calls(node) for source, node in net.nodes.items()}
    with client(net) as c, concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(c.attribute, requests))
    runs = net.coordinator.pipeline.runs - before
    assert runs < len(requests), f"{runs} trunk runs for {len(requests)} concurrent requests"
    # one batch end to end: each node got one Score call per trunk run, not one per request
    assert {source: score_calls(node) - scored[source] for source, node in net.nodes.items()} == dict.fromkeys(SOURCES, runs)
    for images, results in zip(requests, answers):
        expected = offline.attribute(np.stack([preprocess(d, net.bundle.input_spec) for d in images]))
        for got, want in zip(results, expected):
            assert got.fake_score == pytest.approx(want.fake_score, abs=1e-5)
            for source in SOURCES:
                assert got.raw_scores[source] == pytest.approx(want.raw[source], abs=1e-4)


def test_registration_needs_a_signed_challenge_and_enrolment_and_cannot_take_over_another_node(net):
    from shared_backbone.protocol import identity
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    channel, stub = registry_stub(net.target)
    registry = net.coordinator.registry
    try:
        taken = register_request(net.bundle, "alpha", "alpha")
        assert status_code(lambda: stub.Register(taken, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED  # no proof at all
        # node id "alpha" is bound to the real alpha node's key: another key cannot overwrite it
        assert status_code(lambda: register_signed(stub, taken, "intruder-secret")) == grpc.StatusCode.PERMISSION_DENIED
        beat = pb.HeartbeatRequest(node_id="alpha")
        intruder = signed_metadata(stub, beat, "intruder-secret", identity.HEARTBEAT, node_id="alpha")
        assert status_code(lambda: stub.Heartbeat(beat, metadata=intruder, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
        # a replayed challenge (or one issued for another id) is refused with ABORTED: ask again
        replay = signed_metadata(stub, beat, "intruder-secret", identity.HEARTBEAT, node_id="alpha")
        with pytest.raises(grpc.RpcError):
            stub.Heartbeat(beat, metadata=replay, timeout=5)
        assert status_code(lambda: stub.Heartbeat(beat, metadata=replay, timeout=5)) == grpc.StatusCode.ABORTED
        # a new id without an enrolment is refused; the admin cannot even enrol a second node for alpha
        newcomer = register_request(net.bundle, "newcomer", "newcomer")
        assert status_code(lambda: register_signed(stub, newcomer, "new-secret")) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(ValueError, match="already served"):
            registry.enrol("squatter", "alpha")
        # enrolled for one source, registering another: refused; wrong token: refused
        token = registry.enrol("squatter", "squat")
        squatter = register_request(net.bundle, "squatter", "alpha")
        assert status_code(lambda: register_signed(stub, squatter, "sq-secret", token)) == grpc.StatusCode.PERMISSION_DENIED
        own = register_request(net.bundle, "squatter", "squat")
        assert status_code(lambda: register_signed(stub, own, "sq-secret", "not-the-token")) == grpc.StatusCode.UNAUTHENTICATED
        bad_endpoint = register_request(net.bundle, "squatter", "squat", endpoint="unix:/tmp/socket")
        assert status_code(lambda: register_signed(stub, bad_endpoint, "sq-secret", token)) == grpc.StatusCode.INVALID_ARGUMENT
        unknown = pb.HeartbeatRequest(node_id="never-registered")
        meta = signed_metadata(stub, unknown, "x", identity.HEARTBEAT, node_id="never-registered")
        assert status_code(lambda: stub.Heartbeat(unknown, metadata=meta, timeout=5)) == grpc.StatusCode.NOT_FOUND
        assert not any(key == rpc.ENROLMENT_PROOF_METADATA for key, _ in meta)
    finally:
        registry.remove("squatter")
        channel.close()
    entry = registry.get("alpha")
    assert entry.endpoint == f"127.0.0.1:{net.nodes['alpha'].port}"
    assert {e.node_id for e in registry.list()} == set(SOURCES)


def test_incompatible_backbone_is_registered_but_never_queried(net, tmp_path, keypair):
    other = make_bundle(tmp_path / "other", *keypair, version="other")
    assert other.digest != net.bundle.digest
    channel, stub = registry_stub(net.target)
    request = register_request(net.bundle, "old-node", "old-source")
    request.backbone_digest = other.digest
    try:
        token = net.coordinator.registry.enrol("old-node", "old-source")
        assert register_signed(stub, request, "old-secret", token).status == "incompatible"
        with client(net) as c:
            result = c.attribute([png_bytes(np.random.default_rng(5))])[0]
            listed = {s["node_id"]: s["status"] for s in c.list_sources()}
        assert "old-source" not in result.scores and "old-node" not in result.missing_nodes
        assert listed["old-node"] == "incompatible"
    finally:
        net.coordinator.registry.remove("old-node")
        channel.close()


def test_stopped_node_is_missing_then_used_again_after_restart(net, keypair):
    import time

    from node.server import start_node

    rng = np.random.default_rng(6)
    image = png_bytes(rng)
    old = net.nodes["beta"]
    old.registrar.generation = 0  # as a crashed node: it stops without leaving the registry (a clean stop leaves)
    old.stop(0.2)
    start = time.monotonic()
    with client(net) as c:
        result = c.attribute([image])[0]
    assert time.monotonic() - start < 2.0 + 1.0
    assert result.missing_nodes == ["beta"] and sorted(result.scores) == ["alpha", "gamma"]
    # no heartbeat for `stale_after` -> stale: listed missing without being dialled
    wait_until(lambda: net.coordinator.registry.get("beta").status == "stale", 10, "beta to go stale")
    net.nodes["beta"] = start_node(net.node_configs["beta"])
    wait_until(lambda: net.coordinator.registry.get("beta").status == "healthy", 10, "beta to re-register")
    with client(net) as c:
        result = c.attribute([image])[0]
    assert result.missing_nodes == [] and sorted(result.scores) == list(SOURCES)


def test_wrong_enrolment_token_stops_node(net, keypair):
    from node.server import start_node

    make_head(net.root / "delta", net.bundle, "delta", seed=9)
    (net.root / "wrong.token").write_text("wrong-token\n")
    net.coordinator.registry.enrol("delta", "delta")
    bad = dataclasses.replace(net.node_configs["alpha"], source="delta", state_dir=str(net.root / "delta"), serve=dataclasses.replace(
        net.node_configs["alpha"].serve, enrolment_token_file=str(net.root / "wrong.token")))
    reasons = []
    node = start_node(bad, on_fatal=reasons.append)
    try:
        wait_until(lambda: reasons, 10, "the registrar to give up")
    finally:
        node.stop(0.2)
        net.coordinator.registry.remove("delta")
    assert "UNAUTHENTICATED" in reasons[0] and "delta" in reasons[0] and "enrolment proof" in reasons[0]


def test_mutual_tls_network(net, tmp_path, keypair):
    """Coordinator and node with mTLS: registration, scoring and queries all need a CA-signed cert."""
    from coordinator.config import AuditConfig, CoordinatorConfig, GatewayConfig
    from coordinator.gateway.server import start_coordinator
    from node.server import start_node
    from shared_backbone.config import TLSConfig
    from shared_backbone.runtime.gateway_client import AttributionClient, GatewayError

    pem = write_certificates(tmp_path / "pki")
    tls = TLSConfig(cert=pem["cert"], key=pem["key"], ca=pem["ca"], require_client_cert=True)
    coordinator = start_coordinator(CoordinatorConfig(
        bundle=str(net.bundle.path), public_key=str(keypair[1]), registry=str(tmp_path / "registry.sqlite"),
        gateway=GatewayConfig(host="127.0.0.1", port=0, tls=tls, audit=AuditConfig(**NO_AUDIT)),
    ))
    write_enrolment(coordinator.registry, tmp_path / "gamma-state", "gamma-tls", "gamma")
    config = net.node_configs["gamma"]
    node = start_node(dataclasses.replace(config, node_id="gamma-tls", serve=dataclasses.replace(
        config.serve, coordinator=f"127.0.0.1:{coordinator.port}", tls=tls, secret_file=str(tmp_path / "secret"),
        enrolment_token_file=str(tmp_path / "gamma-state" / "enrolment.token"))))
    target = f"127.0.0.1:{coordinator.port}"
    try:
        wait_until(lambda: node.registrar.registered.is_set(), 15, "registration over mTLS")
        image = png_bytes(np.random.default_rng(7))
        with AttributionClient(target, tls=TLSConfig(cert=pem["cert"], key=pem["key"], ca=pem["ca"]), timeout=10) as c:
            result = c.attribute([image])[0]
        assert sorted(result.scores) == ["gamma"] and result.missing_nodes == []
        for wrong in (TLSConfig(ca=pem["ca"]), None):  # no client certificate; plaintext
            with AttributionClient(target, tls=wrong, timeout=3) as c, pytest.raises(GatewayError) as info:
                c.attribute([image])
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        node.stop(0.2)
        coordinator.stop(0.2)


def test_gateway_refuses_bad_settings_and_tampered_bundle(net, tmp_path, keypair):
    import shutil

    from coordinator.config import AuditConfig, CoordinatorConfig, GatewayConfig
    from coordinator.gateway.server import GatewayStartError, start_coordinator

    def config(**gateway) -> CoordinatorConfig:
        return CoordinatorConfig(
            bundle=str(net.bundle.path), public_key=str(keypair[1]), registry=str(tmp_path / "r.sqlite"),
            gateway=GatewayConfig(**{"host": "127.0.0.1", "port": 0, "audit": AuditConfig(**NO_AUDIT), **gateway}),
        )

    with pytest.raises(GatewayStartError, match="gateway.max_images"):
        start_coordinator(config(max_images=0))
    with pytest.raises(GatewayStartError, match="canary audits need the reference set"):
        start_coordinator(config(audit=AuditConfig()))  # the default: audits on
    with pytest.raises(GatewayStartError, match="stale_after"):
        start_coordinator(config(heartbeat_interval=5, stale_after=5))
    with pytest.raises(GatewayStartError, match="query_token_file .*cannot read"):
        start_coordinator(config(query_token_file=str(tmp_path / "absent")))
    with pytest.raises(GatewayStartError, match="plaintext gRPC off loopback is refused"):
        start_coordinator(config(host="0.0.0.0"))
    unsigned = tmp_path / "unsigned"
    shutil.copytree(net.bundle.path, unsigned)
    (unsigned / "manifest.sig").unlink()
    with pytest.raises(GatewayStartError, match="unsigned"):
        start_coordinator(dataclasses.replace(config(), bundle=str(unsigned)))
    busy = config()
    busy.gateway.port = net.coordinator.port
    with pytest.raises(GatewayStartError, match="cannot listen"):
        start_coordinator(busy)

"""A malicious node cannot capture answers: each attack of issues 10 and 15, against a real gateway with
the default canary audit.

Three honest nodes (trained zoo heads, real node servers) and a gateway with the default audit
settings: canaries (the reference set's reals, fresh renders by the coordinator's own generators,
the members' deposited audit sets) mixed into every batch. A node written from the `.proto` alone
then registers with each attack; the answers for the honest sources' images must not change: the
node is refused at registration or quarantined by its audit, and listed in `missing_nodes` with the
reason. The honest nodes are never quarantined or flagged. One control run without audits shows
the saturated-calibration attack really does capture answers when nothing stops it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.canary_sets import deposit_folder, private_reals
from tests.network_support import register_signed, wait_until, write_enrolment

SERVED = 3
REFERENCE_ATTACKER = "evil-reference-below-own-canaries"  # its member deposits "own" images (the zoo's reals:
# another generator's images would make an honest head that claims them look like a thief, see docs/security.md)


class EvilHead:
    """A HeadService that answers whatever it is told to (ignores credentials: it is malicious)."""

    def __init__(self, source: str, digest: str, raw: float) -> None:
        self.source, self.digest, self.raw = source, digest, raw
        self.calls = 0

    def Score(self, request, context):
        from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

        self.calls += 1
        batch = int(request.shape[0]) if request.shape else 1
        return pb.ScoreResponse(raw_scores=[self.raw] * batch, source=self.source, head_digest=self.digest)

    def Describe(self, request, context):
        from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

        return pb.DescribeResponse(source=self.source, head_digest=self.digest)


def serve_evil(head: EvilHead):
    from concurrent import futures

    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_HeadServiceServicer_to_server(head, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@dataclass
class Trust:
    root: Path
    coordinator: object
    nodes: dict
    images: list
    baseline: list
    bundle: object

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"


def start_gateway(root: Path, bundle, keypair, reference: Path | None, deposits: Path | None = None,
                  reals: Path | None = None):
    """A gateway with the default audit settings (off only for the control run: `reference` None)."""
    from coordinator.config import AuditConfig, CoordinatorConfig, GatewayConfig
    from coordinator.gateway.server import start_coordinator

    audit = (AuditConfig(reference=str(deposits or ""), private_reals=str(reals or "")) if reference
             else AuditConfig(enabled=False))
    return start_coordinator(CoordinatorConfig(
        bundle=str(bundle.path), public_key=str(keypair[1]), registry=str(root / "registry.sqlite"),
        reference=str(reference or ""),
        gateway=GatewayConfig(host="127.0.0.1", port=0, node_timeout=3.0, heartbeat_interval=0.3, stale_after=30.0,
                              audit=audit),
    ))


def answers(target: str, images: list[bytes]):
    from shared_backbone.runtime.gateway_client import AttributionClient

    with AttributionClient(target, timeout=30) as client:
        return client.attribute(images)


@pytest.fixture(scope="module")
def trust(tmp_path_factory, zoo_bundle, zoo_heads, zoo_reference, tiny_zoo, keypair):
    import shutil

    from node.config import NodeConfig, NodeServeConfig
    from node.server import start_node
    from shared_backbone.data.datasets import load_split
    from attribnet.lab.datasets.zoo import zoo_data_config

    root = tmp_path_factory.mktemp("trust")
    sources = sorted(zoo_heads)[:SERVED]
    deposits = deposit_folder(tiny_zoo, root / "deposits", sources, {REFERENCE_ATTACKER: "real"})
    coordinator = start_gateway(root, zoo_bundle, keypair, zoo_reference, deposits, private_reals(tiny_zoo, root / "private-reals"))
    nodes = {}
    for source in sources:
        shutil.copytree(zoo_heads[source], root / source / "head")
        write_enrolment(coordinator.registry, root / source, source, source)
        nodes[source] = start_node(NodeConfig(
            source=source, backbone=str(zoo_bundle.path), public_key=str(keypair[1]), state_dir=str(root / source),
            serve=NodeServeConfig(host="127.0.0.1", port=0, coordinator=f"127.0.0.1:{coordinator.port}",
                                  heartbeat_interval=0.3, rpc_timeout=2.0, max_backoff=1.0)))
    wait_until(lambda: sum(e.status == "healthy" for e in coordinator.registry.list()) == SERVED, 60,
               "the honest nodes to register and pass their audits")
    _, splits = load_split(zoo_data_config(tiny_zoo))
    images = [s.path.read_bytes() for s in splits["test"] if s.source in sources][:24]
    baseline = answers(f"127.0.0.1:{coordinator.port}", images)
    assert {a.attribution for a in baseline} & set(sources), "the honest heads must attribute some images"
    yield Trust(root, coordinator, nodes, images, baseline, zoo_bundle)
    for node in nodes.values():
        node.stop(0.2)
    coordinator.stop(0.2)


def _stub(target: str):
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

    channel = rpc.open_channel(target)
    return channel, pb_grpc.RegistryServiceStub(channel)


def evil_request(bundle, node_id: str, source: str, port: int, *, a: float = 1.0, b: float = 0.0, threshold: float = 0.5,
                 method: str = "platt", endpoint: str | None = None, metrics: dict | None = None,
                 positives: list[float] | None = None):
    from shared_backbone.protocol import wire
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    return pb.RegisterRequest(
        node_id=node_id, source=source, endpoint=endpoint or f"127.0.0.1:{port}", backbone_digest=bundle.digest,
        backbone_version=bundle.version, head_digest="e" * 64, threshold=threshold,
        calibration=pb.Calibration(method=method, a=a, b=b, positive_scores=positives or []),
        metrics=wire.metrics_to_struct(metrics or {}),
    )


def assert_answers_unchanged(trust: Trust, evil_id: str) -> None:
    now = answers(trust.target, trust.images)
    for before, after in zip(trust.baseline, now):
        assert after.attribution == before.attribution
        assert after.scores == pytest.approx(before.scores, abs=1e-6)  # other rows (canaries) in the batch: float32 noise
        assert evil_id in after.missing_nodes and after.missing_reasons[evil_id].startswith("quarantined: canary audit")


ATTACKS = {  # name: (calibration a, b, threshold, raw score, registration extras)
    "saturated-calibration": (50.0, 30.0, 0.05, 0.6, {}),  # the largest map and lowest threshold allowed
    "saturated-calibration-raw-1": (50.0, 30.0, 0.05, 1.0, {}),
    "claims-every-image": (1.0, 0.0, 0.5, 0.9999, {}),  # honest-looking calibration, claims everything
    "reports-specificity-0": (1.0, 0.0, 0.5, 0.9999, {"metrics": {"calib": {"calibrated": {"specificity": 0.0}}}}),
    "degenerate-conformal-reference": (50.0, 30.0, 0.05, 0.9999, {"positives": [0.0] * 4096}),
    # claims nothing, but registers a conformal reference below its own deposited canaries' scores (0.3)
    "reference-below-own-canaries": (1.0, 0.0, 0.5, 0.3, {"positives": [0.05 + 0.001 * i for i in range(200)]}),
    "nan-scores": (1.0, 0.0, 0.5, float("nan"), {}),
    "out-of-range-scores": (1.0, 0.0, 0.5, 7.5, {}),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_node_that_claims_what_is_not_its_own_is_quarantined_and_answers_do_not_change(trust, attack):
    a, b, threshold, raw, extras = ATTACKS[attack]
    source = f"evil-{attack}"[:40]
    head = EvilHead(source, "e" * 64, raw)
    server, port = serve_evil(head)
    channel, stub = _stub(trust.target)
    registry = trust.coordinator.registry
    request = evil_request(trust.bundle, source, source, port, a=a, b=b, threshold=threshold, **extras)
    try:
        token = registry.enrol(source, source)
        register_signed(stub, request, "evil-secret", token)
        wait_until(lambda: registry.get(source).status == "quarantined", 20, f"the {attack} node to be quarantined")
        assert head.calls >= 1  # it was audited, and its answers never reached a client
        time.sleep(0.5)  # a batch routed just before the quarantine may still reach it
        calls = head.calls
        assert_answers_unchanged(trust, source)
        assert head.calls == calls
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # quarantine survives re-registration
            pool.submit(register_signed, stub, request, "evil-secret").result()
        assert registry.get(source).status == "quarantined"
    finally:
        registry.remove(source)
        channel.close()
        server.stop(0)
    assert all(e.status == "healthy" and not e.flag for e in registry.list()), "an honest node was quarantined or flagged"


def test_names_squatting_and_missing_enrolment_are_refused_at_registration(trust):
    from shared_backbone.protocol import wire
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    registry = trust.coordinator.registry
    honest = sorted(trust.nodes)[0]
    channel, stub = _stub(trust.target)

    def code(call) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            call()
        return info.value.code()

    try:
        for reserved in ("real", "unknown", "ambiguous"):
            with pytest.raises(ValueError, match="reserved"):
                registry.enrol("evil", reserved)
        token = registry.enrol("evil", "evil")
        cases = {
            "source real": evil_request(trust.bundle, "evil", "real", 1),
            "squatting an honest source": evil_request(trust.bundle, "evil", honest, 1),
            "threshold 0": evil_request(trust.bundle, "evil", "evil", 1, threshold=0.0),
            "unix socket": evil_request(trust.bundle, "evil", "evil", 1, endpoint="unix:/run/x.sock"),
            "link-local": evil_request(trust.bundle, "evil", "evil", 1, endpoint="169.254.169.254:80"),
            "internal address on a plaintext gateway": evil_request(trust.bundle, "evil", "evil", 1, endpoint="10.0.0.8:50061"),
            "oversize metrics": evil_request(trust.bundle, "evil", "evil", 1, metrics={"x": "y" * 300, **{f"k{i}": i for i in range(3000)}}),
            "calibration out of bounds": evil_request(trust.bundle, "evil", "evil", 1, a=1e6),
        }
        expected = {"source real": grpc.StatusCode.INVALID_ARGUMENT, "squatting an honest source": grpc.StatusCode.PERMISSION_DENIED}
        for name, request in cases.items():
            got = code(lambda: register_signed(stub, request, "evil-secret", token))
            assert got == expected.get(name, grpc.StatusCode.INVALID_ARGUMENT), name
        with pytest.raises(ValueError, match="already served"):
            registry.enrol("squatter", honest)
        no_token = evil_request(trust.bundle, "evil", "evil", 1)
        assert code(lambda: register_signed(stub, no_token, "evil-secret")) == grpc.StatusCode.UNAUTHENTICATED
        assert code(lambda: stub.Register(no_token, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        assert "evil" not in {e.node_id for e in registry.list()}
        assert wire.metrics_from_struct(pb.RegisterRequest().metrics) == {}
    finally:
        registry.remove("evil")
        channel.close()
    assert answers(trust.target, trust.images[:4])[0].attribution == trust.baseline[0].attribution


def test_without_audits_the_saturated_node_would_capture_the_answers(trust, tmp_path, keypair):
    """The control: the attack against a gateway without canary audits takes the honest images.

    The rule ranks by raw scores, so the attacker pairs the largest calibration with the largest raw score."""
    from coordinator.registry import Registry
    from shared_backbone.protocol.registration import Registration

    registry = Registry(tmp_path / "registry.sqlite")
    for source in trust.nodes:  # the same honest nodes' registrations, copied over
        entry = trust.coordinator.registry.get(source)
        registry.enrol(source, source)
        registry.register(Registration.from_fields(entry.values()), public_key=entry.public_key, enrolment_verified=True)
    registry.close()
    coordinator = start_gateway(tmp_path, trust.bundle, keypair, reference=None)
    coordinator.pool.credential = trust.coordinator.registry.gateway_credential  # the honest nodes' credential
    head = EvilHead("evil", "e" * 64, 1.0)
    server, port = serve_evil(head)
    channel, stub = _stub(f"127.0.0.1:{coordinator.port}")
    try:
        token = coordinator.registry.enrol("evil", "evil")
        register_signed(stub, evil_request(trust.bundle, "evil", "evil", port, a=50.0, b=30.0), "evil-secret", token)
        captured = [a.attribution for a in answers(f"127.0.0.1:{coordinator.port}", trust.images)]
    finally:
        channel.close()
        server.stop(0)
        coordinator.stop(0.2)
    fakes = [b for b in trust.baseline if b.attribution != "real"]
    assert fakes and captured.count("evil") >= len(fakes) // 2, captured


def test_win_rate_monitor_flags_a_source_that_wins_everything(tmp_path):
    from coordinator.config import AuditConfig
    from coordinator.gateway.win_rate import WinRateMonitor
    from coordinator.registry import Registry
    from tests.test_registry import register

    registry = Registry(tmp_path / "r.sqlite")
    entries = [register(registry, f"n{i}", f"s{i}", f"k{i}") for i in range(3)]
    monitor = WinRateMonitor(registry, AuditConfig(win_window=100, win_min_answers=30, max_win_share=0.8))
    for i in range(10):
        monitor.observe(["s0", "s1", "s2", "real"], entries)
    assert registry.get("s0".replace("s", "n")).flag == ""
    for _ in range(100):
        monitor.observe(["s2"], entries)
    assert "won" in registry.get("n2").flag and registry.get("n0").flag == ""
    assert registry.get("n2").status == "healthy"  # flagged for the admin, not quarantined by default
    quarantining = WinRateMonitor(registry, dataclasses.replace(monitor.config, quarantine_on_win_rate=True))
    for _ in range(100):
        quarantining.observe(["s1"], entries)
    assert registry.get("n1").status == "quarantined"
    registry.close()


def test_win_rate_monitor_counts_requests_and_never_raises(tmp_path):
    """A folder of one source's images is one request, not hundreds of wins; a dominant source that is
    not answering the current request (its node down) must not fail the query (it raised KeyError)."""
    from coordinator.config import AuditConfig
    from coordinator.gateway.win_rate import WinRateMonitor
    from coordinator.registry import Registry
    from tests.test_registry import register

    registry = Registry(tmp_path / "r.sqlite")
    entries = [register(registry, f"n{i}", f"s{i}", f"k{i}") for i in range(3)]
    monitor = WinRateMonitor(registry, AuditConfig(win_window=100, win_min_answers=30, max_win_share=0.8))
    for i in range(40):
        monitor.observe([f"s{i % 3}"] * 3, entries)
    monitor.observe(["s0"] * 480, entries)  # a fact-checker's folder of one source
    assert all(registry.get(f"n{i}").flag == "" for i in range(3))
    for _ in range(100):
        monitor.observe(["s2"], entries)
    monitor.observe(["s0", "s1"], entries[:2])  # n2 down: its source is not in this request
    assert "won" in registry.get("n2").flag and "requests" in registry.get("n2").flag
    registry.close()


def test_flower_replies_are_checked_by_the_same_admission(tmp_path, zoo_bundle):
    """A fit_head reply without an enrolment proof, with a forged signature, or with a bad field is refused."""
    from coordinator.admission import Admission
    from coordinator.flower.head_round import flower_identity, parse_fit_head_reply, register_results, reply_proof
    from coordinator.registry import Registry
    from shared_backbone.protocol import flower_messages, identity
    from tests.network_support import fit_head_reply

    registry = Registry(tmp_path / "r.sqlite")
    admission = Admission(registry)
    token = registry.enrol("flower-node", "tconv_a")
    key = identity.node_key("node-secret")

    def reply(node: int, *, source: str = "tconv_a", with_proof: bool = True, tamper: bool = False, threshold: float = 0.5,
              calibration: str = '{"method": "platt", "a": 1.0, "b": 0.0}'):
        challenge = admission.challenges.issue(flower_identity(node))
        values = {"node_id": "flower-node", "source": source, "endpoint": "127.0.0.1:61000", "head_digest": "a" * 64,
                  "backbone_digest": zoo_bundle.digest, "backbone_version": zoo_bundle.version, "threshold": threshold,
                  "calibration": calibration, "metrics": "{}",
                  flower_messages.PUBLIC_KEY_FIELD: identity.public_key_hex(key)}
        digest = identity.record_digest(values, flower_messages.PROOF_FIELDS)
        values[flower_messages.SIGNATURE_FIELD] = identity.sign(key, identity.FLOWER_REGISTER, challenge, "flower-node", digest)
        values[flower_messages.ENROLMENT_PROOF_FIELD] = identity.enrolment_proof(
            token, challenge, "flower-node", source, values[flower_messages.PUBLIC_KEY_FIELD]) if with_proof else ""
        if tamper:
            values["endpoint"] = "127.0.0.1:1"
        message = fit_head_reply(node, values)
        result = parse_fit_head_reply(node, message, zoo_bundle, 1.0)
        register_results(admission, [result], {node: reply_proof(message, challenge)})
        return result

    assert "not enrolled" in reply(1, with_proof=False).error
    assert "signature does not verify" in reply(2, tamper=True).error
    assert "threshold" in reply(3, threshold=0.0).error
    assert "reserved" in reply(4, source="real").error
    typical = '{"method": "platt", "a": 1.0, "b": 0.0, "typicality_scores": %s}'
    assert "typicality scores must be sorted" in reply(6, calibration=typical % "[-1.0, -2.0]").error
    assert "typicality scores must be finite" in reply(7, calibration=typical % "[-1.0, NaN]").error
    assert registry.list() == []
    reference = [-float(i) for i in range(12, 0, -1)]
    assert reply(5, calibration=typical % reference).status == "registered"
    assert registry.get("flower-node").public_key == identity.public_key_hex(key)
    assert list(registry.get("flower-node").calibration.typicality_scores) == reference
    registry.close()


@pytest.mark.parametrize("claimed,reported_specificity,quarantined", [
    (8, 0.99, False),  # an honest tiny head that claims a third of a small sample: not proof of anything
    (0, 0.99, False),
    (20, 0.0, True),  # claiming most of what it is shown; reporting specificity 0 about itself does not help
    (24, 0.0, True),
])
def test_the_audit_judges_what_it_observed_not_what_the_node_reports(claimed, reported_specificity, quarantined):
    """The node's self-reported metrics are not even an input: only the claims the gateway saw it make."""
    import numpy as np

    from coordinator.config import AuditConfig
    from coordinator.gateway.audit import Evidence, verdict

    evidence = Evidence(generation=1, window=200)
    evidence.add("~coordinator-generators", np.arange(24) < claimed)  # the honest tiny heads claim up to a third
    assert evidence.shown == 24
    reason = verdict(evidence, AuditConfig())
    assert (reason is not None) == quarantined, (reason, reported_specificity)
    if quarantined:
        assert f"claimed {claimed} of 24 canaries of ~coordinator-generators" in reason

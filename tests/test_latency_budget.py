"""No member can slow the gateway: the latency budget against a slow node, on real gRPC servers on loopback.

Two real nodes (alpha, beta) serve a real coordinator whose node deadline (3 s) is far above the
slow node's answer time (1 s), so before the budget every query waited for it. The slow member is
the real `HeadServicer` registered like any node, sleeping before it answers. What is asserted is
structure (who is missing and why, calls made, Prometheus counts, no failed query); the only
clocks read are per-query wall times compared with the slow node's own sleep and with a
baseline measured in the same test.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import threading
import time
import numpy as np
import pytest

from tests.network_support import Net, make_bundle, make_head, png_bytes, start_gateway, wait_until, write_enrolment

GOOD = ("alpha", "beta")
NODE_TIMEOUT = 3.0
SLOW_SECONDS = 1.0  # the slow node's answer time: under the node deadline, so only the budget cuts it
COOLDOWN = 1.0
STRIKES = 2


@pytest.fixture(scope="module")
def budget_net(tmp_path_factory, keypair):
    from node.server import start_node
    from tests.network_support import node_config

    root = tmp_path_factory.mktemp("budget")
    bundle = make_bundle(root / "bundle", *keypair)
    coordinator = start_gateway(
        bundle, keypair[1], root / "registry.sqlite", max_images=4, node_timeout=NODE_TIMEOUT,
        node_cooldown_seconds=COOLDOWN, node_slow_strikes=STRIKES, heartbeat_interval=0.3, stale_after=600.0,
    )
    nodes = {}
    for i, source in enumerate(GOOD):
        make_head(root / source, bundle, source, seed=500 + i)
        write_enrolment(coordinator.registry, root / source, source, source)
        nodes[source] = start_node(node_config(root, bundle, source, coordinator.port, keypair))
    wait_until(lambda: sum(e.status == "healthy" for e in coordinator.registry.list()) == len(GOOD), 30, "2 healthy nodes")
    net = Net(root, bundle, coordinator, nodes, f"127.0.0.1:{coordinator.port}")
    yield net
    for node in nodes.values():
        node.stop(0.2)
    coordinator.stop(0.2)


class DelayedHead:
    """A real HeadService on its own server, registered like any node, that sleeps `delay` seconds before
    answering, and holds every call while `resume` is clear (a stall, e.g. a GC pause)."""

    def __init__(self, net: Net, source: str, delay: float = 0.0) -> None:
        from node.head_service import HeadServicer
        from shared_backbone.protocol import identity
        from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
        from shared_backbone.protocol.registration import Registration
        from shared_backbone.runtime import rpc

        self.net, self.source, self.calls, self.release, self.resume = net, source, 0, threading.Event(), threading.Event()
        self.resume.set()
        head = make_head(net.root / source, net.bundle, source, seed=600 + len(source))
        outer = self

        class Servicer(HeadServicer):
            def Score(self, request, context):
                outer.calls += 1
                outer.release.wait(delay)
                outer.resume.wait(NODE_TIMEOUT)
                return super().Score(request, context)

        self.servicer = Servicer(head, net.bundle, source, 64)
        self.server = rpc.create_server(workers=8, max_message_mb=4)
        pb_grpc.add_HeadServiceServicer_to_server(self.servicer, self.server)
        self.port = rpc.bind(self.server, "127.0.0.1", 0)
        self.server.start()
        registry = net.coordinator.registry
        registry.enrol(source, source)
        registry.register(  # what admission does once the node's proofs check out
            Registration.from_fields(dict(
                node_id=source, source=source, endpoint=f"127.0.0.1:{self.port}", backbone_digest=net.bundle.digest,
                head_digest=head.digest, calibration=head.calibration.to_dict(), threshold=0.5)),
            public_key=identity.public_key_hex(identity.node_key(f"{source}-secret")), enrolment_verified=True,
        )

    def close(self) -> None:
        self.release.set()
        self.resume.set()
        self.net.coordinator.registry.remove(self.source)
        self.server.stop(0.2).wait(2)
        self.servicer.close()


def client(net: Net, timeout: float = 10.0):
    from shared_backbone.runtime.gateway_client import AttributionClient

    return AttributionClient(net.target, timeout=timeout)


def timed(c, image: list[bytes]):
    """(the one answer, seconds it took)."""
    began = time.perf_counter()
    result = c.attribute(image)[0]
    return result, time.perf_counter() - began


def sample(net: Net, name: str, node: str) -> float:
    return net.coordinator.metrics.registry.get_sample_value(f"{name}_total", {"node": node}) or 0.0


def test_quorum_is_a_majority_but_at_most_all_but_one():
    from coordinator.gateway.node_pool import LatencyBudget

    assert [LatencyBudget.quorum(n) for n in (1, 2, 3, 4, 5, 16)] == [1, 1, 2, 3, 3, 9]
    budget = LatencyBudget(floor=0.25, factor=2.0)
    assert budget.allowance(0.005) == 0.25 and budget.allowance(0.5) == 1.0


def test_a_slow_member_is_cut_then_cooled_and_then_costs_nothing(budget_net):
    """(a) no query fails; (b) after its strikes the slow node is missing and no query waits for it, its probes included."""
    from coordinator.gateway.node_pool import PROBING, SLOW
    from coordinator.gateway.serving_pipeline import COOLING
    from shared_backbone.runtime.prometheus import NODE_SKIPPED, NODE_SLOW

    image = [png_bytes(np.random.default_rng(11))]
    with client(budget_net) as c:
        for _ in range(3):
            c.attribute(image)
        baseline = [timed(c, image)[1] for _ in range(10)]
    slow = DelayedHead(budget_net, "sloth", SLOW_SECONDS)
    try:
        with client(budget_net) as c:
            answers = [timed(c, image) for _ in range(STRIKES)]
            cooled_at = time.monotonic()
            while slow.calls == STRIKES or time.monotonic() < cooled_at + COOLDOWN + 0.5:  # on, past the first probe
                answers.append(timed(c, image))
                assert len(answers) < 2000, "the cooled node was never probed"
        wait_until(lambda: sample(budget_net, NODE_SLOW, "sloth") == STRIKES + 1, 10, "the probe to be judged late")
        calls = slow.calls
    finally:
        slow.close()
    reasons = [result.missing_reasons.get("sloth") for result, _ in answers]
    assert all(sorted(result.scores) == list(GOOD) and "sloth" in result.missing_nodes for result, _ in answers)
    assert reasons[:STRIKES] == [SLOW] * STRIKES
    assert set(reasons[STRIKES:]) == {COOLING, PROBING} and reasons.count(PROBING) == 1
    assert calls == STRIKES + 1  # its strikes, then one probe: skipped otherwise
    assert sample(budget_net, NODE_SKIPPED, "sloth") == len(answers) - calls
    after = [seconds for _, seconds in answers[STRIKES:]]
    assert max(after) < SLOW_SECONDS / 2, after  # nothing after the strikes waited for it, not even its probe
    assert statistics.median(after) <= 4 * statistics.median(baseline) + 0.05, (baseline, after)


def test_a_single_stall_of_an_honest_node_never_cools_it(budget_net):
    """(c) A node that stalls once (a GC pause) while two batches are at it is cut from both, counts one
    strike, and answers the next query: overlapping late calls are one stall, not two in a row."""
    from coordinator.gateway.node_pool import SLOW
    from shared_backbone.runtime.prometheus import NODE_SKIPPED, NODE_SLOW

    spiky = DelayedHead(budget_net, "spiky")
    images = [[png_bytes(np.random.default_rng(20 + i))] for i in range(3)]
    try:
        with client(budget_net) as c:
            assert "spiky" in c.attribute(images[0])[0].scores
            spiky.resume.clear()
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                first = pool.submit(c.attribute, images[1])
                wait_until(lambda: spiky.calls == 2, 5, "the first batch to reach the stalled node", interval=0.01)
                second = pool.submit(c.attribute, images[2])
                wait_until(lambda: spiky.calls == 3, 5, "a second batch to reach it during the same stall", interval=0.01)
                stalled = [first.result(10)[0], second.result(10)[0]]
            spiky.resume.set()  # the stall ends; had it cooled the node, the next queries would fall in its cool-down
            later = [c.attribute(image)[0] for image in images]
    finally:
        spiky.close()
    assert [result.missing_reasons.get("spiky") for result in stalled] == [SLOW, SLOW]
    assert all("spiky" in result.scores and not result.missing_nodes for result in later)
    assert sample(budget_net, NODE_SLOW, "spiky") == 2 and sample(budget_net, NODE_SKIPPED, "spiky") == 0


@pytest.mark.parametrize("key,value", [("node_budget_floor", 0.0), ("node_slow_strikes", 0), ("node_budget_factor", -1.0)])
def test_budget_settings_are_checked(budget_net, tmp_path, keypair, key, value):
    from coordinator.gateway.server import GatewayStartError

    with pytest.raises(GatewayStartError, match=f"gateway.{key} must be"):
        start_gateway(budget_net.bundle, keypair[1], tmp_path / "r.sqlite", **{key: value})

"""No member can slow the gateway: the latency budget against a slow node, on real gRPC servers on loopback.

Two real nodes (alpha, beta) serve a real coordinator whose node deadline (5 s) is far above the
slow node's answer time (2.5 s), so before the budget every query waited for it. The slow member is
the real `HeadServicer` registered like any node, sleeping before it answers. What is asserted is
structure (who is missing and why, calls made, Prometheus counts, no failed query); the only
clocks read are per-query wall times compared with the slow node's own sleep and with a
baseline measured in the same test.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import time
import numpy as np
import pytest

from tests.network_support import Net, TamperedHead, client, png_bytes, start_gateway, start_net, stop_net, wait_until

GOOD = ("alpha", "beta")
NODE_TIMEOUT = 5.0
SLOW_SECONDS = 2.5  # the slow node's answer time: under the node deadline, so only the budget cuts it;
# long beside the budget's 0.25 s floor, so a query that waited for it stands out from a stall of a loaded machine
COOLDOWN = 1.0
STRIKES = 2


@pytest.fixture(scope="module")
def budget_net(tmp_path_factory, keypair):
    net = start_net(
        tmp_path_factory.mktemp("budget"), keypair, GOOD, 500, max_images=4, node_timeout=NODE_TIMEOUT,
        node_cooldown_seconds=COOLDOWN, node_slow_strikes=STRIKES, heartbeat_interval=0.3, stale_after=600.0,
    )
    yield net
    stop_net(net)


def delayed_head(net: Net, source: str, delay: float = 0.0) -> TamperedHead:
    """A real HeadService registered like any node that sleeps `delay` seconds before answering and holds
    every call while `resume` is clear (a stall, e.g. a GC pause)."""
    return TamperedHead(net, source, delay=delay, seed=600, workers=8, hold=NODE_TIMEOUT)


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
    slow = delayed_head(budget_net, "sloth", SLOW_SECONDS)
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
    assert all(sorted(result.scores) == list(GOOD) and "sloth" in result.missing_nodes for result, _ in answers), [
        (sorted(result.scores), result.missing_reasons, round(seconds, 3)) for result, seconds in answers]
    assert reasons[:STRIKES] == [SLOW] * STRIKES
    assert set(reasons[STRIKES:]) == {COOLING, PROBING} and reasons.count(PROBING) == 1
    assert calls == STRIKES + 1  # its strikes, then one probe: skipped otherwise
    assert sample(budget_net, NODE_SKIPPED, "sloth") == len(answers) - calls
    after = [seconds for _, seconds in answers[STRIKES:]]
    assert max(after) < SLOW_SECONDS / 2, list(zip(reasons[STRIKES:], after))  # nothing after the strikes waited for it, not even its probe
    assert statistics.median(after) <= 4 * statistics.median(baseline) + 0.05, (baseline, after)


def test_a_single_stall_of_an_honest_node_never_cools_it(budget_net):
    """(c) A node that stalls once (a GC pause) while two batches are at it is cut from both, counts one
    strike, and answers the next query: overlapping late calls are one stall, not two in a row."""
    from coordinator.gateway.node_pool import SLOW
    from shared_backbone.runtime.prometheus import NODE_SKIPPED, NODE_SLOW

    spiky = delayed_head(budget_net, "spiky")
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

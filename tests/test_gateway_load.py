"""The gateway under load and with hostile nodes, on real gRPC servers on loopback.

Two real nodes (alpha, beta) serve a real coordinator whose queue is tiny. Hostile nodes are the
real `HeadServicer` with its answer tampered (NaN, out of [0, 1], too few scores) or delayed,
registered like any node: each must only ever show up in `missing_nodes`. Nothing is timed: the
tests count calls, trace counters and Prometheus samples.
"""

from __future__ import annotations

import concurrent.futures
import urllib.request

import grpc
import numpy as np
import pytest

from tests.network_support import TamperedHead, client, png_bytes, start_gateway, start_net, stop_net, wait_until

GOOD = ("alpha", "beta")
MAX_QUEUE = 4
NODE_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def load_net(tmp_path_factory, keypair):
    net = start_net(
        tmp_path_factory.mktemp("load"), keypair, GOOD, 300, node_metrics=True, max_images=4,
        max_queue_images=MAX_QUEUE, node_timeout=NODE_TIMEOUT, node_cooldown_failures=2, node_cooldown_seconds=600.0,
        heartbeat_interval=0.3, stale_after=600.0, metrics_port=0, access_log=True,
    )
    yield net
    stop_net(net)


def sample(net, name: str, labels: dict) -> float:
    return net.coordinator.metrics.registry.get_sample_value(name, labels) or 0.0


def _nan(response):
    response.raw_scores[0] = float("nan")
    return response


def _above_one(response):
    response.raw_scores[-1] = 1.5
    return response


def _short(response):
    del response.raw_scores[-1]
    return response


def _typicality_nan(response):
    response.typicality[0] = float("nan")
    return response


def _typicality_infinite(response):
    response.typicality[-1] = float("-inf")
    return response


def _typicality_short(response):
    del response.typicality[-1]
    return response


@pytest.mark.parametrize("tamper", [_typicality_nan, _typicality_infinite, _typicality_short],
                         ids=["nan", "infinite", "too-few"])
def test_node_with_invalid_typicality_is_missing(load_net, tamper):
    bad = TamperedHead(load_net, "liar", tamper, typicality=True)
    honest = TamperedHead(load_net, "honest", lambda response: response, typicality=True)
    try:
        with client(load_net) as c:
            results = c.attribute([png_bytes(np.random.default_rng(1)), png_bytes(np.random.default_rng(2))])
    finally:
        bad.close()
        honest.close()
    assert bad.calls == 1 and honest.calls == 1
    for result in results:
        assert result.missing_nodes == ["liar"] and "liar" not in result.scores
        assert "honest" in result.typicality_p_values and "liar" not in result.typicality


@pytest.mark.parametrize("tamper", [_nan, _above_one, _short], ids=["nan", "above-one", "too-few"])
def test_node_with_invalid_scores_is_missing_never_part_of_the_answer(load_net, tamper):
    bad = TamperedHead(load_net, "liar", tamper)
    try:
        with client(load_net) as c:
            results = c.attribute([png_bytes(np.random.default_rng(1)), png_bytes(np.random.default_rng(2))])
    finally:
        bad.close()
    assert bad.calls == 1
    for result in results:
        assert result.missing_nodes == ["liar"]
        assert sorted(result.scores) == sorted(result.raw_scores) == list(GOOD)
        assert all(0.0 <= v <= 1.0 for v in result.raw_scores.values())


def test_hung_node_costs_a_latency_budget_per_strike_then_sits_out_a_cool_down(load_net):
    from shared_backbone.runtime.prometheus import NODE_SKIPPED, NODE_SLOW, NODE_TIMEOUTS

    slow = TamperedHead(load_net, "sloth", lambda response: response, delay=30.0)
    image = [png_bytes(np.random.default_rng(3))]
    try:
        with client(load_net, timeout=NODE_TIMEOUT / 2) as c:  # shorter than node_timeout: the node's deadline follows it
            first = c.attribute(image)[0]
        with client(load_net) as c:
            answers = [c.attribute(image)[0] for _ in range(3)]
        calls = slow.calls
    finally:
        slow.close()
    for result in [first, *answers]:
        assert result.missing_nodes == ["sloth"] and sorted(result.scores) == list(GOOD)
    assert calls == 2  # two late answers in a row (node_slow_strikes), then the node is skipped instead of dialled
    assert sample(load_net, f"{NODE_SLOW}_total", {"node": "sloth"}) == 2
    assert sample(load_net, f"{NODE_TIMEOUTS}_total", {"node": "sloth"}) == 0  # cut by the budget, not its deadline
    assert sample(load_net, f"{NODE_SKIPPED}_total", {"node": "sloth"}) == 2


def test_full_queue_is_resource_exhausted_and_a_deadline_is_honoured_in_the_queue(load_net):
    """With the trunk held busy, the queue fills: one more request is refused at once, a queued one
    whose deadline passes is answered DEADLINE_EXCEEDED and never computed."""
    from shared_backbone.runtime.gateway_client import GatewayError
    from shared_backbone.runtime.prometheus import QUEUE_DEPTH, REJECTED

    pipeline = load_net.coordinator.pipeline
    rng = np.random.default_rng(4)
    depth = {"stage": "trunk"}
    runs = pipeline.runs
    with concurrent.futures.ThreadPoolExecutor(3) as pool, client(load_net, timeout=10) as c, \
            client(load_net, timeout=0.5) as hasty:
        with pipeline.serving._lock:  # the batcher's next trunk run waits here
            running = pool.submit(c.attribute, [png_bytes(rng)])
            wait_until(lambda: pipeline.runs > runs, 10, "the first batch to reach the trunk")
            queued = pool.submit(hasty.attribute, [png_bytes(rng) for _ in range(MAX_QUEUE)])
            wait_until(lambda: sample(load_net, QUEUE_DEPTH, depth) == MAX_QUEUE, 10, "a full queue")
            with pytest.raises(GatewayError) as full:
                c.attribute([png_bytes(rng)])
            with pytest.raises(GatewayError) as late:
                queued.result(10)
        assert len(running.result(10)) == 1
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in full.value.details
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sample(load_net, f"{REJECTED}_total", {"reason": "expired"}) >= 1
    with client(load_net) as c:
        assert len(c.attribute([png_bytes(rng)])) == 1 and c.health() == "SERVING"
    assert pipeline.runs == runs + 2  # the blocked batch and the last one: the expired request never ran


def test_rate_limit_per_client_is_resource_exhausted(tmp_path, keypair, load_net):
    from shared_backbone.runtime.gateway_client import AttributionClient, GatewayError

    limited = start_gateway(load_net.bundle, keypair[1], tmp_path / "r.sqlite", rate_limit=0.01, rate_burst=3)
    image = png_bytes(np.random.default_rng(5))
    try:
        with AttributionClient(f"127.0.0.1:{limited.port}", timeout=10) as c:
            assert len(c.attribute([image] * 3)) == 3
            with pytest.raises(GatewayError) as info:
                c.attribute([image])
            assert c.health() == "SERVING"
    finally:
        limited.stop(0.2)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit of 0.01 images/s" in info.value.details


def test_compiled_models_never_retrace(load_net):
    rng = np.random.default_rng(6)
    with client(load_net) as c:  # one at a time: this gateway's queue holds only MAX_QUEUE images
        for i in range(8):
            c.attribute([png_bytes(rng) for _ in range(1 + i % MAX_QUEUE)])
    assert load_net.coordinator.pipeline.serving.traces == 1
    assert {source: node.servicer.compiled.traces for source, node in load_net.nodes.items()} == dict.fromkeys(GOOD, 1)


def test_metrics_endpoints_and_access_log(load_net, caplog):
    from shared_backbone.model.rule import REASONS
    from shared_backbone.runtime import prometheus as metrics

    caplog.set_level("INFO", logger="attribnet.access")
    rng = np.random.default_rng(7)
    before = {reason: sample(load_net, f"{metrics.ANSWERS}_total", {"reason": reason}) for reason in REASONS}
    with client(load_net) as c:
        results = c.attribute([png_bytes(rng), png_bytes(rng, 8)])  # the second is too small to judge
    after = {reason: sample(load_net, f"{metrics.ANSWERS}_total", {"reason": reason}) for reason in REASONS}
    counted = {reason: after[reason] - before[reason] for reason in REASONS if after[reason] != before[reason]}
    assert results[1].reason == "out_of_scope" and results[0].reason in REASONS
    assert counted == {results[0].reason: 1, "out_of_scope": 1}  # the first is judged: never out of scope
    gateway_text = _scrape(load_net.coordinator.metrics_port)
    for name in (metrics.REQUESTS, metrics.LATENCY, metrics.BATCH_SIZE, metrics.QUEUE_DEPTH, metrics.IMAGES,
                 metrics.NODE_LATENCY, metrics.TRACES, metrics.STAGE_SECONDS, metrics.ANSWERS):
        assert name in gateway_text, name
    assert 'attribnet_rpc_requests_total{code="OK",method="AttributionService/Attribute"}' in gateway_text
    node_text = _scrape(load_net.nodes["alpha"].metrics_port)
    assert 'method="HeadService/Score"' in node_text and 'attribnet_batch_size_count{stage="head"}' in node_text
    assert 'attribnet_stage_seconds_count{stage="head"}' in node_text
    lines = [r.getMessage() for r in caplog.records if r.name == "attribnet.access"]
    assert any("AttributionService/Attribute OK" in line for line in lines), lines


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()

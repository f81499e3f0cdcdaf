"""The whole network as separate processes on loopback: a gateway and 3 nodes with trained zoo heads.

`attribnet coordinator serve` and three `attribnet node serve` processes run from YAML configs like
a user would start them. The network's answers on the zoo test split must equal the offline
attributor's (same bundle, same heads): attribution exactly, scores to 1e-6. Then a node is
killed and restarted, the coordinator is restarted, and tampered bundles are refused at start-up.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.network_support import cli_process, free_port, stop_process, wait_healthy, wait_until, write_enrolment, write_yaml

log = logging.getLogger(__name__)

SERVED = 3
NODE_TIMEOUT = 2.0
START_TIMEOUT = 90.0
QUERY_BATCH = 32  # images per Attribute call (the gateway allows 64)


@dataclass
class Network:
    root: Path
    bundle: object
    sources: list[str]
    gateway_port: int
    coordinator_yaml: Path
    node_yaml: dict[str, Path]
    node_ports: dict[str, int]
    processes: dict[str, object] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    def start(self, name: str):
        if name == "coordinator":
            args = ["coordinator", "serve", "--config", str(self.coordinator_yaml)]
            target = self.target
        else:
            args = ["node", "serve", "--config", str(self.node_yaml[name])]
            target = f"127.0.0.1:{self.node_ports[name]}"
        log_path = self.root / f"{name}.log"
        self.processes[name] = cli_process(args, log_path)
        return target, self.processes[name], log_path


def client(net: Network, timeout: float = 20.0):
    from shared_backbone.runtime.gateway_client import AttributionClient

    return AttributionClient(net.target, timeout=timeout)


def registered(net: Network, want: set[str]) -> bool:
    with client(net, timeout=2.0) as c:
        try:
            return {s["source"] for s in c.list_sources() if s["status"] == "healthy"} >= want
        except Exception:  # noqa: BLE001 - not up yet; the bounded wait decides
            return False


@pytest.fixture(scope="module")
def network(tmp_path_factory, zoo_bundle, zoo_heads, zoo_reference, keypair):
    from coordinator.registry import Registry

    root = tmp_path_factory.mktemp("e2e")
    sources = sorted(zoo_heads)[:SERVED]
    gateway_port = free_port()
    coordinator_yaml = write_yaml(root / "coordinator.yaml", {
        "bundle": str(zoo_bundle.path),
        "public_key": str(keypair[1]),
        "reference": str(zoo_reference),  # canary audits on, as by default
        "registry": str(root / "coordinator-state" / "registry.sqlite"),
        "gateway": {"host": "127.0.0.1", "port": gateway_port,
                    "node_timeout": NODE_TIMEOUT, "heartbeat_interval": 0.5, "stale_after": 3.0},
    })
    node_yaml, node_ports = {}, {}
    registry = Registry(root / "coordinator-state" / "registry.sqlite")
    for source in sources:
        state = root / f"node-{source}"
        shutil.copytree(zoo_heads[source], state / "head")
        write_enrolment(registry, state, source, source)  # what `attribnet coordinator enrol` hands the node
        node_ports[source] = free_port()
        node_yaml[source] = write_yaml(root / f"node-{source}.yaml", {
            "source": source,
            "backbone": str(zoo_bundle.path),
            "public_key": str(keypair[1]),
            "state_dir": str(state),
            "serve": {"host": "127.0.0.1", "port": node_ports[source], "coordinator": f"127.0.0.1:{gateway_port}",
                      "heartbeat_interval": 0.5, "max_backoff": 1.0,
                      "rpc_timeout": 2.0},
        })
    registry.close()
    net = Network(root, zoo_bundle, sources, gateway_port, coordinator_yaml, node_yaml, node_ports)
    started = [net.start("coordinator")] + [net.start(source) for source in sources]
    try:
        for target, process, log_path in started:
            wait_healthy(target, process, START_TIMEOUT, log_path)
        wait_until(lambda: registered(net, set(sources)), 30, "3 nodes registered")
        yield net
    finally:
        for process in net.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in net.processes.values():
            stop_process(process)


@pytest.fixture(scope="module")
def zoo_test_split(zoo_bundle, tiny_zoo):
    from shared_backbone.data.datasets import load_split
    from attribnet.lab.datasets.zoo import zoo_data_config

    index, splits = load_split(zoo_data_config(tiny_zoo))
    return index, splits["test"]


@pytest.fixture(scope="module")
def offline(zoo_bundle, zoo_heads, network):
    from shared_backbone.model.attributor import OfflineAttributor
    from shared_backbone.model.heads import load_head

    return OfflineAttributor(zoo_bundle, [load_head(zoo_heads[source], zoo_bundle) for source in network.sources])


def test_network_equals_offline_on_the_zoo_test_split(network, offline, zoo_test_split, zoo_bundle):
    from shared_backbone.model.preprocessing import preprocess

    index, samples = zoo_test_split
    images = [sample.path.read_bytes() for sample in samples]
    expected = offline.attribute(np.stack([preprocess(data, zoo_bundle.input_spec) for data in images]))
    with client(network) as c:
        start = time.perf_counter()
        results = [r for i in range(0, len(images), QUERY_BATCH) for r in c.attribute(images[i : i + QUERY_BATCH])]
        batch_seconds = time.perf_counter() - start
        latencies = []
        for data in images[:10]:
            start = time.perf_counter()
            c.attribute([data])
            latencies.append(time.perf_counter() - start)
    assert len(results) == len(samples)
    for sample, got, want in zip(samples, results, expected):
        assert got.attribution == want.attribution, sample.path
        assert got.fake_score == pytest.approx(want.fake_score, abs=1e-6)
        assert sorted(got.scores) == network.sources and got.missing_nodes == []
        for source in network.sources:
            assert got.scores[source] == pytest.approx(want.calibrated[source], abs=1e-6)
            assert got.raw_scores[source] == pytest.approx(want.raw[source], abs=1e-6)
    served = set(network.sources)
    truth = [index.class_of(s.source) for s in samples]
    answers = [r.attribution for r in results]
    in_set = [(t, a) for t, a in zip(truth, answers) if t in served or t == "real"]
    accuracy = sum(t == a for t, a in in_set) / len(in_set)
    others = [a for t, a in zip(truth, answers) if t not in served and t != "real"]
    confusion: dict[tuple[str, str], int] = {}
    for pair in zip(truth, answers):
        confusion[pair] = confusion.get(pair, 0) + 1
    log.warning("e2e (truth, answer) counts: %s", sorted(confusion.items()))
    log.warning(
        "e2e zoo test split: %d images, accuracy %.3f on real + %d served sources (%d images), "
        "%d/%d images of unserved sources answered 'unknown'; %d images in requests of %d: %.3fs; "
        "single-image latency median %.1f ms",
        len(samples), accuracy, len(served), len(in_set), others.count("unknown"), len(others), len(samples),
        QUERY_BATCH, batch_seconds, 1000 * float(np.median(latencies)),
    )


def test_query_cli_json_lines(network, zoo_test_split, tmp_path, capsys):
    from attribnet.cli import main

    _, samples = zoo_test_split
    paths = [str(s.path) for s in samples[:3]] + [str(tmp_path / "missing.png")]
    heatmaps = tmp_path / "heatmaps"
    code = main(["query", "--gateway", network.target, "--json", "--heatmap", str(heatmaps), *paths])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and [line["path"] for line in lines] == paths
    for line in lines[:3]:
        assert {"fake_score", "scores", "attribution", "missing_nodes", "backbone"} <= set(line)
        assert sorted(line["scores"]) == network.sources and Path(line["heatmap"]).is_file()
    assert "cannot read file" in lines[3]["error"]
    assert main(["query", "--gateway", network.target, *paths[:1]]) == 0
    assert "calibrated" in capsys.readouterr().out
    folder = tmp_path / "folder" / "nested"
    folder.mkdir(parents=True)
    copies = [folder / f"{i}-{sample.path.name}" for i, sample in enumerate(samples[:2])]
    for copy, sample in zip(copies, samples):
        copy.write_bytes(sample.path.read_bytes())
    assert main(["query", "--gateway", network.target, "--json", str(tmp_path / "folder")]) == 0
    listed = [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(str(copy) for copy in copies)


def test_query_cli_equals_predict_cli(network, zoo_test_split, zoo_heads, keypair, capsys):
    """`attribnet query` against the network and offline `attribnet predict` give the same answers."""
    from attribnet.cli import main

    _, samples = zoo_test_split
    paths = [str(s.path) for s in samples]
    heads = [arg for source in network.sources for arg in ("--head", str(zoo_heads[source]))]
    assert main(["predict", "--backbone", str(network.bundle.path), "--public-key", str(keypair[1]), *heads,
                 "--json", "--batch-size", "16", *paths]) == 0
    offline = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["query", "--gateway", network.target, "--json", "--batch-size", "16", *paths]) == 0
    online = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in offline] == [row["path"] for row in online] == paths
    for want, got in zip(offline, online):
        assert got["attribution"] == want["attribution"] and got["reason"] == want["reason"], got["path"]
        assert got["fake_score"] == pytest.approx(want["fake_score"], abs=1e-6)
        assert got["scores"] == pytest.approx({s: h["calibrated"] for s, h in want["heads"].items()}, abs=1e-6)


def test_killed_node_is_flagged_missing_then_used_again(network, zoo_test_split):
    _, samples = zoo_test_split
    images = [s.path.read_bytes() for s in samples[:4]]
    victim = network.sources[1]
    stop_process(network.processes[victim], sig=signal.SIGKILL)
    with client(network) as c:
        start = time.perf_counter()
        results = c.attribute(images)
        elapsed = time.perf_counter() - start
    assert elapsed < NODE_TIMEOUT + 2.0
    for result in results:
        assert result.missing_nodes == [victim]
        assert sorted(result.scores) == [s for s in network.sources if s != victim]

    target, process, log_path = network.start(victim)
    wait_healthy(target, process, START_TIMEOUT, log_path)

    def answered_by_all():
        with client(network) as c:
            result = c.attribute(images[:1])[0]
        return not result.missing_nodes and sorted(result.scores) == network.sources

    wait_until(answered_by_all, 30, f"{victim} to re-register and answer", interval=0.5)
    assert "registered node" in log_path.read_text().split("serving head")[-1]


def test_hung_node_is_missing_within_the_latency_budget(network, zoo_test_split):
    """A node that accepts connections but never answers (SIGSTOP) costs one latency budget after the
    other nodes answered (gateway.node_budget_floor), not its deadline, and never an error."""
    from coordinator.gateway.node_pool import SLOW

    _, samples = zoo_test_split
    images = [samples[0].path.read_bytes()]
    victim = network.sources[2]
    process = network.processes[victim]
    process.send_signal(signal.SIGSTOP)
    try:
        with client(network) as c:
            start = time.perf_counter()
            result = c.attribute(images)[0]
            elapsed = time.perf_counter() - start
    finally:
        process.send_signal(signal.SIGCONT)
    assert result.missing_nodes == [victim] and victim not in result.scores
    assert result.missing_reasons[victim] == SLOW and elapsed < NODE_TIMEOUT - 0.5

    def answered_by_all():
        with client(network) as c:
            answer = c.attribute(images)[0]
        return not answer.missing_nodes and sorted(answer.scores) == network.sources

    wait_until(answered_by_all, 30, f"{victim} to answer again after SIGCONT", interval=0.5)


def test_restarted_coordinator_keeps_its_registry(network, zoo_test_split):
    from coordinator.registry import Registry

    _, samples = zoo_test_split
    with client(network) as c:
        before = {s["node_id"]: (s["registered_at"], s["head_digest"]) for s in c.list_sources()}
    assert stop_process(network.processes["coordinator"]) == 0
    stored = Registry(network.root / "coordinator-state" / "registry.sqlite")
    assert sorted(e.node_id for e in stored.list()) == sorted(before)
    stored.close()

    target, process, log_path = network.start("coordinator")
    wait_healthy(target, process, START_TIMEOUT, log_path)
    with client(network) as c:
        after = {s["node_id"]: (s["registered_at"], s["head_digest"]) for s in c.list_sources()}
    assert after == before  # same entries, same heads: nothing re-trained, nothing re-created

    def answered_by_all():
        with client(network) as c:
            result = c.attribute([samples[0].path.read_bytes()])[0]
        return not result.missing_nodes and sorted(result.scores) == network.sources

    wait_until(answered_by_all, 30, "nodes to be served by the restarted coordinator", interval=0.5)


def _tamper(bundle_path: Path, out: Path) -> Path:
    shutil.copytree(bundle_path, out)
    weights = out / "primary.weights.h5"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    return out


def test_tampered_bundle_is_refused_by_gateway_and_node(network, tmp_path):
    tampered = _tamper(network.bundle.path, tmp_path / "tampered")
    source = network.sources[0]
    runs = {
        "gateway": (["coordinator", "serve", "--config", str(network.coordinator_yaml), "--bundle", str(tampered),
                     "--port", str(free_port()), "--registry", str(tmp_path / "other.sqlite")], tmp_path / "gateway.log"),
        "node": (["node", "serve", "--config", str(network.node_yaml[source]), "--backbone", str(tampered),
                  "--port", str(free_port())], tmp_path / "node.log"),
    }
    processes = {name: cli_process(args, log_path) for name, (args, log_path) in runs.items()}
    for name, process in processes.items():
        try:
            code = process.wait(START_TIMEOUT)
        finally:
            stop_process(process)
        output = runs[name][1].read_text()
        assert code == 2, output
        last = output.strip().splitlines()[-1]
        assert last.startswith("attribnet ") and "primary.weights.h5" in last and "tampered" in last, output
        assert "Traceback" not in output

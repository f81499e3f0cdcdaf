"""The whole-network demo, tiny: one `--serve` run in a subprocess (zoo, bundle, Flower simulation,
gateway + node processes, queries), shared with test_doc_commands.py (tests/fixtures_demo.py). While
it serves, the test asks the gateway itself and checks the report's predictions are the network's
answers; SIGTERM must then stop every process."""

from __future__ import annotations

import csv
import json
import queue
import signal
import time
from pathlib import Path

import pytest

from shared_backbone.model.rule import REASONS
from tests.fixtures_demo import DEMO_SOURCES as SOURCES, alive, descendants, started_for


def _check_report(out: Path) -> tuple[list, list[dict]]:
    """The report agrees with the test split and its own predictions file; returns (test samples, rows)."""
    from shared_backbone.data.datasets import load_split
    from attribnet.lab.datasets.zoo import zoo_data_config

    report = json.loads((out / "network-report.json").read_text())
    index, splits = load_split(zoo_data_config(out / "zoo"))
    test = splits["test"]
    attribution = report["attribution"]
    assert attribution["n"] == len(test) > 0
    expected_counts = {}
    for sample in test:
        expected_counts[index.class_of(sample.source)] = expected_counts.get(index.class_of(sample.source), 0) + 1
    assert report["dataset"]["test_counts"] == expected_counts
    assert {k: v["n"] for k, v in attribution["per_source"].items()} == {"real": expected_counts["real"], **{s: expected_counts[s] for s in SOURCES}}
    assert sorted(report["federation"]["registered"]) == sorted(SOURCES) and report["missing_nodes"] == {}
    assert Path(attribution["files"]["confusion_matrix"]).is_file()
    assert Path(attribution["files"]["confusion_matrix"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    agreement = report["offline_agreement"]
    assert agreement["n"] == len(test) and agreement["fraction"] >= 0.9, agreement  # batch rounding may flip a near-tie
    assert report["latency"]["requests"] >= 1 and report["latency"]["median_ms"] > 0

    with open(attribution["files"]["predictions"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["image"] for r in rows) == sorted(str(s.path.relative_to(out / "zoo")) for s in test)
    allowed = {"real", "unknown", "ambiguous", *SOURCES}
    assert all(r["predicted"] in allowed for r in rows), "every image needs an attribution"
    by_reason = attribution["by_reason"]  # every answer's exit, agreeing with the answers themselves
    assert sum(by_reason.values()) == len(rows) and set(by_reason) <= set(REASONS)
    assert by_reason.get("tie", 0) == attribution["ambiguous"]
    assert sum(by_reason.get(r, 0) for r in ("no_candidate", "atypical", "atypical_tie", "out_of_scope")) == attribution["unknown"]
    assert all(r["reason"] == "best_source" for r in rows if r["predicted"] in SOURCES)
    correct = sum(r["predicted"] == r["truth"] for r in rows)
    assert attribution["accuracy"] == pytest.approx(correct / len(rows))
    matrix = attribution["confusion_matrix"]
    assert sum(map(sum, matrix)) == len(rows) and sum(matrix[i][i] for i in range(len(attribution["classes"]))) == correct
    return test, rows


def _check_live_answers(gateway: str, out: Path, test: list, rows: list[dict]) -> None:
    """The network still serves: its answers now are the ones the report was computed from."""
    from shared_backbone.runtime.gateway_client import AttributionClient

    by_image = {r["image"]: r for r in rows}
    probe = test[:6]
    with AttributionClient(gateway, timeout=30.0) as client:
        assert client.health() == "SERVING"
        assert sorted(s["source"] for s in client.list_sources() if s["status"] == "healthy") == sorted(SOURCES)
        answers = client.attribute([s.path.read_bytes() for s in probe])
    for sample, answer in zip(probe, answers):
        row = by_image[str(sample.path.relative_to(out / "zoo"))]
        assert answer.attribution == row["predicted"]
        for source in SOURCES:
            assert answer.scores[source] == pytest.approx(float(row[f"score_{source}"]), abs=1e-4)


def _check_sigterm_stops_everything(process, out: Path, lines, seen: list[str]) -> None:
    children = descendants(process.pid)
    assert len(children) >= 3, f"expected the gateway and {len(SOURCES)} node processes, found {sorted(children)}"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)], "processes left after SIGTERM"
    assert not started_for(out), "a process of this demo is still running"
    tail = []
    while True:
        try:
            line = lines.get(timeout=5.0)
        except queue.Empty:
            break
        if line == "":
            break
        tail.append(line)
    assert any(line.startswith("report: ") for line in tail), "".join(seen[-10:] + tail[-10:])
    _check_nodes_left(out / "network" / "registry.sqlite")


def _check_nodes_left(path: Path) -> None:
    """Stopped before the gateway, every node left the registry (a signed Deregister), none is merely stale."""
    from coordinator.registry import Registry

    registry = Registry(path, stale_after=3600.0, create=False)
    try:
        assert {entry.node_id: entry.status for entry in registry.list()} == {source: "left" for source in SOURCES}
        assert not [(e.node_id, e.quarantine, e.flag) for e in registry.list() if e.quarantine or e.flag], \
            "an honest founding node was quarantined or flagged over the demo's queries"
    finally:
        registry.close()
    log = (path.parent / "coordinator.log").read_text(errors="replace")
    assert "canary audits on" in log and "canary audit: node" in log and "passed on" in log, \
        "the demo's gateway must audit its nodes (canaries mixed into its batches)"


def test_network_demo_serves_real_answers_and_stops_cleanly_on_sigterm(served_demo):
    demo = served_demo.ensure()
    process, gateway, out, lines, seen = demo.process, demo.gateway, demo.out, demo.lines, demo.seen
    assert gateway == f"127.0.0.1:{demo.port}"
    host, port = gateway.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    test, rows = _check_report(out)
    _check_live_answers(gateway, out, test, rows)
    _check_sigterm_stops_everything(process, out, lines, seen)

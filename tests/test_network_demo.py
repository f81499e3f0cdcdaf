"""The whole-network demo, tiny: one `serve=True` run in a subprocess (zoo, bundle, Flower simulation,
gateway + node processes, queries). While it serves, the test asks the gateway itself and checks
the report's predictions are the network's answers; SIGTERM must then stop every process."""

from __future__ import annotations

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
SOURCES = ["tconv_a", "nnconv_a"]
OVERRIDES = {
    "zoo.image_size": 32, "zoo.per_source": 30, "zoo.sources": SOURCES, "zoo.workers": 1,
    "primary.epochs": 2, "primary.min_epochs": 1, "head.epochs": 1, "head.min_epochs": 1,
}
READY = "gateway listening on "


def nested(dotted: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}: the overrides as a demo YAML."""
    tree: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc, no extra dependency)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def started_for(out: Path) -> set[int]:
    """Processes whose command line names this test's output folder (orphans of a killed demo)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(out).encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_lines(stream, lines: "queue.Queue[str]") -> None:
    for line in stream:
        lines.put(line)
    lines.put("")


@pytest.fixture
def served_demo(tmp_path):
    """Starts the demo with serve=True; yields (process, gateway, out, log lines); always ends it."""
    from attribnet.launch.flower_processes import free_port

    out = tmp_path / "out"
    port = free_port()
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(nested(OVERRIDES)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "attribnet.cli", "demo", "--config", str(config), "--out", str(out), "--serve", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    gateway = None
    deadline = time.monotonic() + 240
    try:
        while gateway is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line == "":
                break
            seen.append(line)
            if READY in line:
                gateway = line.split(READY, 1)[1].strip()
        assert gateway, "no 'gateway listening on' line; output tail:\n" + "".join(seen[-30:])
        assert gateway == f"127.0.0.1:{port}"
        yield process, gateway, out, lines, seen
    finally:  # on failure: the node/gateway processes run in their own sessions, end them one by one
        for pid in descendants(process.pid) | started_for(out) | {process.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)


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
    finally:
        registry.close()


def test_network_demo_serves_real_answers_and_stops_cleanly_on_sigterm(served_demo):
    process, gateway, out, lines, seen = served_demo
    host, port = gateway.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    test, rows = _check_report(out)
    _check_live_answers(gateway, out, test, rows)
    _check_sigterm_stops_everything(process, out, lines, seen)

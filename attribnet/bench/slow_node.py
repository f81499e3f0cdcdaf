"""`attribnet bench serving --slow-node SECONDS`: what one slow member costs honest queries.

One run on this machine: the gateway and N honest node processes on loopback (untrained synthetic
models, started as `attribnet bench serving` starts them) answer `queries` sequential single-image
queries; then one more node joins that answers every `Score` SECONDS late (a real `HeadServicer`
in this process, enrolled by token and registered with a signed challenge like any node), and the
same queries run again, its first strikes included; it leaves, and the next round begins
(`repeats` rounds). Side by side: medians over the rounds of p50/p99/max with and without it, their
ratios, how often the slow node was missing and why, errors. Writes OUT/slow-node.json.
"""

from __future__ import annotations

import collections
import json
import logging
import shutil
import statistics
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attribnet.config import ServingBenchConfig

log = logging.getLogger(__name__)

WARMUP_QUERIES = 20


class SlowNode:
    """A real HeadService in this process that sleeps `delay` seconds before every answer, registered like any node."""

    def __init__(self, workdir: Path, gateway: str, bundle, head_dir: Path, delay: float) -> None:
        from attribnet.launch.enrolment import enrol_local_nodes
        from node.head_service import HeadServicer
        from node.registrar import Registrar
        from node.server import register_request
        from shared_backbone.model.heads import load_head
        from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
        from shared_backbone.runtime import rpc

        head = load_head(head_dir, bundle)
        self.node_id, token_path, stop = head.source, workdir / "slow-node.token", threading.Event()
        enrol_local_nodes(workdir / "registry.sqlite", {self.node_id: (head.source, token_path)})

        class Servicer(HeadServicer):
            def Score(self, request, context):
                stop.wait(delay)
                return super().Score(request, context)

        self.stop_event, self.servicer = stop, Servicer(head, bundle, self.node_id, 256)
        self.server = rpc.create_server(workers=16, max_message_mb=32)
        pb_grpc.add_HeadServiceServicer_to_server(self.servicer, self.server)
        port = rpc.bind(self.server, "127.0.0.1", 0)
        self.server.start()
        self.channel = rpc.open_channel(gateway)
        self.registrar = Registrar(
            self.channel, register_request(self.node_id, f"127.0.0.1:{port}", bundle, head),
            enrolment_token=token_path.read_text().strip(), secret=f"slow-node-{time.time_ns()}", heartbeat_interval=1.0,
            rpc_timeout=2.0, max_backoff=1.0,
        )
        self.registrar.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.registrar.stop()
        self.server.stop(0.5).wait(2)
        self.servicer.close()
        self.channel.close()


def query(gateway: str, images: list[bytes], count: int, slow_id: str) -> dict[str, Any]:
    """`count` single-image queries one after another: latency percentiles, errors, the slow node's part."""
    from shared_backbone.runtime.gateway_client import AttributionClient, GatewayError

    latencies, errors, slow = [], collections.Counter(), collections.Counter()
    with AttributionClient(gateway, timeout=30.0) as client:
        for i in range(count):
            began = time.perf_counter()
            try:
                result = client.attribute([images[i % len(images)]])[0]
            except GatewayError as exc:
                errors[exc.code.name] += 1
                continue
            latencies.append(time.perf_counter() - began)
            slow["answered" if slow_id in result.scores else result.missing_reasons.get(slow_id, "not registered")] += 1
    ms = np.asarray(latencies) * 1000
    return {"queries": count, "errors": dict(errors), "slow_node": dict(slow), "latencies_ms": ms.round(2).tolist(),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
            "mean_ms": float(ms.mean())}


def _wait_listed(gateway: str, node_id: str, listed: bool, timeout: float = 60.0) -> None:
    """Waits until the gateway lists `node_id` as healthy (or no longer lists it)."""
    from shared_backbone.runtime.gateway_client import AttributionClient

    end = time.monotonic() + timeout
    while True:
        with AttributionClient(gateway, timeout=2.0) as client:
            healthy = {s["node_id"] for s in client.list_sources() if s["status"] == "healthy"}
        if (node_id in healthy) == listed:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"the gateway {gateway} still {'does not list' if listed else 'lists'} {node_id}")
        time.sleep(0.2)


def one_round(network, bundle, head_dir: Path, images: list[bytes], delay: float, queries: int,
              progress: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One window without the slow node, then one from the moment it joined (its strikes included); it leaves after."""
    from coordinator.registry import Registry

    workdir = Path(network.workdir)
    slow_id = Path(head_dir).name
    without = query(network.gateway, images, queries, slow_id)
    slow = SlowNode(workdir, network.gateway, bundle, head_dir, delay)
    try:
        _wait_listed(network.gateway, slow.node_id, True)
        with_slow = query(network.gateway, images, queries, slow_id)
    finally:
        slow.stop()
        registry = Registry(workdir / "registry.sqlite")
        registry.remove(slow.node_id)
        registry.close()
    _wait_listed(network.gateway, slow.node_id, False)
    progress(f"p50/p99 without the slow node {without['p50_ms']:.1f}/{without['p99_ms']:.1f} ms, with a node {delay:g} s "
             f"late {with_slow['p50_ms']:.1f}/{with_slow['p99_ms']:.1f} ms; slow node {with_slow['slow_node']}")
    return without, with_slow


def run_slow_node(out: str | Path, config: ServingBenchConfig, delay: float, *, honest: int = 3, queries: int = 500,
                  gateway: dict[str, Any] | None = None, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Honest single-image latency without, then with, one node answering `delay` s late, `config.repeats`
    rounds in turn (so load drift on a shared machine hits both alike); writes OUT/slow-node.json."""
    from attribnet.bench.perf import SYNTHETIC_GATEWAY, random_images, synthetic_models
    from attribnet.launch.local_network import start_local_network
    from shared_backbone.model import bundle as bundle_lib
    from shared_backbone.model import signing

    out, began = Path(out), time.monotonic()
    work = out / "work" / "slow-node"
    bundle_path, public_key, head_dirs = synthetic_models(work / "models", config.image_size, honest + 1)
    bundle = bundle_lib.load_bundle(bundle_path, signing.load_public_key(public_key))
    sources = sorted(head_dirs)
    images = random_images(64, config.image_size, seed=0)
    settings = {"max_inflight_batches": config.max_inflight_batches, "batch_window_ms": config.batch_window_ms,
                "stale_after": 60.0, **SYNTHETIC_GATEWAY, **(gateway or {})}
    shutil.rmtree(work / "network", ignore_errors=True)
    progress(f"slow node: starting the gateway and {honest} honest node process(es)")
    with start_local_network(work / "network", bundle_path, public_key, {s: head_dirs[s] for s in sources[:-1]},
                             gateway_settings=settings, timeout=300.0) as network:
        query(network.gateway, images, WARMUP_QUERIES, sources[-1])
        rounds = [one_round(network, bundle, head_dirs[sources[-1]], images, delay, queries, progress)
                  for _ in range(max(1, config.repeats))]
    report = summarise(rounds, delay, honest, settings)
    report["wall_seconds"] = round(time.monotonic() - began, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slow-node.json").write_text(json.dumps(report, indent=2))
    return report


def summarise(rounds: list[tuple[dict[str, Any], dict[str, Any]]], delay: float, honest: int,
              settings: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds side by side, their ratios, the pooled view, and how many queries with the slow
    node were slower than every query of the same round without it (the ones that waited for it)."""
    phases = {"without": [r[0] for r in rounds], "with": [r[1] for r in rounds]}
    median = {key: {phase: statistics.median(w[key] for w in windows) for phase, windows in phases.items()}
              for key in ("p50_ms", "p99_ms", "max_ms")}
    pooled = {phase: np.concatenate([w["latencies_ms"] for w in windows]) for phase, windows in phases.items()}
    slow_node: collections.Counter = collections.Counter()
    for window in phases["with"]:
        slow_node.update(window["slow_node"])
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slow_node_seconds": delay, "honest_nodes": honest, "rounds": len(rounds), "gateway": settings, **median,
        "p50_ratio": median["p50_ms"]["with"] / median["p50_ms"]["without"],
        "p99_ratio": median["p99_ms"]["with"] / median["p99_ms"]["without"],
        "pooled_p99_ms": {phase: float(np.percentile(ms, 99)) for phase, ms in pooled.items()},
        "queries_slower_than_any_without": sum(sum(ms > without["max_ms"] for ms in with_slow["latencies_ms"])
                                               for without, with_slow in rounds),
        "slow_node": dict(slow_node),
        "errors": {phase: sum(sum(w["errors"].values()) for w in windows) for phase, windows in phases.items()},
        "windows": {phase: [{k: v for k, v in w.items() if k != "latencies_ms"} for w in windows]
                    for phase, windows in phases.items()},
    }

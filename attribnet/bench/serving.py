"""`attribnet bench serving`: the network at the limit, measured against the same work done in one process.

In one run, on the same machine and the same preloaded encoded images (random-noise PNGs, the
slowest kind to decode), with untrained models (cost does not depend on the weights):
  in-process limit  decode + preprocess + trunk + N heads in this process, compiled, batched
                    (`in_process_batch` images a step), nothing else: the unavoidable work;
  network           the gateway + N node processes on loopback (`attribnet ... serve`, as an
                    operator starts them) under a closed-loop load of C clients sending batches of
                    B images (`loadgen.py`); images/s and p50/p95/p99 over measured windows;
  profile           per network point, CPU seconds per image of each process (gateway, nodes,
                    load generator) from /proc, and the gateway's own stage times from /metrics;
  transfer          head training vs a full model from scratch (`transfer.py`).
Every number is the median of `repeats` windows; ratios use the limit measured in the same run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attribnet.config import ServingBenchConfig

log = logging.getLogger(__name__)

# dotted overrides of each profile (`--profile`), applied over the config file
PROFILES: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"clients": [8], "repeats": 1, "seconds": 4.0, "warmup_seconds": 1.5, "images": 128,
              "transfer.per_source": 300, "transfer.primary.epochs": 8, "transfer.train.epochs": 8},
}
PROFILE_STAGES = ("decode", "queue", "trunk", "nodes", "respond")
WORK_DIR = "work"  # OUT/work: models, process logs, the transfer zoo (not results)
Progress = Callable[[str], None]


def _median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def in_process_limit(bundle, heads: list, images: list[bytes], batch: int, config: ServingBenchConfig) -> dict[str, Any]:
    """Images/s of decode + preprocess + trunk + every head in this process, compiled and batched."""
    from shared_backbone.model import networks
    from shared_backbone.model.compiled import CompiledModel
    from shared_backbone.model.features import as_head_features
    from shared_backbone.model.preprocessing import load_image, to_model_inputs

    spec = bundle.input_spec
    serving = CompiledModel(networks.build_serving_model(bundle.load_primary()))
    compiled = [CompiledModel(head.model) for head in heads]
    chunks = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)] or [images]
    seconds = {"decode": 0.0, "trunk": 0.0, "heads": 0.0}

    def step(chunk: list[bytes]) -> None:
        began = time.perf_counter()
        inputs = to_model_inputs([load_image(data, spec.image_size) for data in chunk], spec)
        decoded = time.perf_counter()
        _, features = serving(inputs)
        features = as_head_features(features).astype(np.float32)
        trunk = time.perf_counter()
        for head in compiled:
            head(features)
        seconds["decode"] += decoded - began
        seconds["trunk"] += trunk - decoded
        seconds["heads"] += time.perf_counter() - trunk

    step(chunks[0])
    rates = []
    for _ in range(config.repeats):
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < config.seconds:
            chunk = chunks[(done // batch) % len(chunks)]
            step(chunk)
            done += len(chunk)
        rates.append(done / (time.perf_counter() - began))
    return {"nodes": len(heads), "batch": batch, "rates": rates, "seconds": seconds}


def merge_limits(*runs: dict[str, Any]) -> dict[str, Any]:
    """One in-process row from several runs: the median of every window, the share of each step."""
    rates = [rate for run in runs for rate in run["rates"]]
    seconds = {key: sum(run["seconds"][key] for run in runs) for key in runs[0]["seconds"]}
    total = sum(seconds.values())
    median, low, high = _median_spread(rates)
    return {"nodes": runs[0]["nodes"], "images_per_s": median, "min_images_per_s": low, "max_images_per_s": high,
            "windows": len(rates), "batch": runs[0]["batch"], "share": {k: v / total for k, v in seconds.items()}}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(port: int) -> dict[tuple[str, str], float]:
    """(sample name, stage label) -> value of the gateway's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, sample.labels.get("stage", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class Probe:
    """CPU seconds of every process and the gateway's stage times, as deltas over a measured point."""

    def __init__(self, network, metrics_port: int) -> None:
        self.pids = {"gateway": network.processes["coordinator"].pid,
                     "nodes": [p.pid for name, p in network.processes.items() if name.startswith("node-")],
                     "client": os.getpid()}
        self.metrics_port = metrics_port

    def read(self) -> dict[str, Any]:
        return {"gateway": _cpu_seconds(self.pids["gateway"]), "nodes": sum(_cpu_seconds(p) for p in self.pids["nodes"]),
                "client": _cpu_seconds(self.pids["client"]), "wall": time.perf_counter(),
                "metrics": _scrape(self.metrics_port)}

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """CPU ms per image by process, and mean ms per image of each gateway stage."""
        from shared_backbone.runtime.prometheus import BATCH_SIZE, IMAGES, STAGE_SECONDS

        def metric(name: str, stage: str = "") -> float:
            return after["metrics"].get((name, stage), 0.0) - before["metrics"].get((name, stage), 0.0)

        images = metric(f"{IMAGES}_total") or 1.0
        wall = after["wall"] - before["wall"]
        cpu = {k: 1000 * (after[k] - before[k]) / images for k in ("gateway", "nodes", "client")}
        stages = {stage: 1000 * metric(f"{STAGE_SECONDS}_sum", stage) / images for stage in PROFILE_STAGES}
        batches = metric(f"{BATCH_SIZE}_count", "trunk") or 1.0
        return {"cpu_ms_per_image": cpu, "stage_ms_per_image": stages, "mean_trunk_batch": metric(f"{BATCH_SIZE}_sum", "trunk") / batches,
                "cpu_busy": sum(after[k] - before[k] for k in ("gateway", "nodes", "client")) / wall / (os.cpu_count() or 1)}


def network_point(network, probe: Probe, images: list[bytes], clients: int, batch: int,
                  config: ServingBenchConfig) -> dict[str, Any]:
    """One (N, C, B) point: `repeats` closed-loop windows; medians, spreads and the profile."""
    from attribnet.bench.loadgen import closed_loop

    before = probe.read()
    windows = [closed_loop(network.gateway, images, clients=clients, batch=batch, warmup=config.warmup_seconds,
                           seconds=config.seconds, timeout=config.request_timeout).summary()
               for _ in range(config.repeats)]
    profile = Probe.delta(before, probe.read())
    rate, low, high = _median_spread([w["images_per_s"] for w in windows])
    row = {"clients": clients, "batch": batch, "images_per_s": rate, "min_images_per_s": low, "max_images_per_s": high,
           "errors": sum(w["errors"] for w in windows), "profile": profile}
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        row[key] = statistics.median(w[key] for w in windows)
    return row


def open_loop_point(network, images: list[bytes], nodes: int, config: ServingBenchConfig) -> dict[str, Any]:
    """Single images offered at a fixed rate, the same for every N: the tail that fan-out adds."""
    from attribnet.bench.loadgen import open_loop

    windows = [open_loop(network.gateway, images, rate=config.open_loop_images_per_s, batch=1,
                         warmup=config.warmup_seconds, seconds=config.seconds, timeout=config.request_timeout).summary()
               for _ in range(config.repeats)]
    row = {"nodes": nodes, "offered_images_per_s": config.open_loop_images_per_s,
           "images_per_s": statistics.median(w["images_per_s"] for w in windows), "errors": sum(w["errors"] for w in windows)}
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        row[key] = statistics.median(w[key] for w in windows)
    return row


def measure_network(out: Path, bundle, public_key: Path, head_dirs: dict[str, Path], nodes: int, images: list[bytes],
                    config: ServingBenchConfig, progress: Progress) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Starts the gateway + `nodes` node processes; measures every closed-loop (C, B) point and the open-loop one."""
    from attribnet.bench.perf import SYNTHETIC_GATEWAY
    from attribnet.launch.flower_processes import free_port
    from attribnet.launch.local_network import start_local_network

    sources = sorted(head_dirs)[:nodes]
    metrics_port = free_port()
    gateway = {"metrics_port": metrics_port, "batch_window_ms": config.batch_window_ms,
               "max_inflight_batches": config.max_inflight_batches, "max_concurrent_rpcs": 256,
               "workers": 48, "stale_after": 60.0, **SYNTHETIC_GATEWAY}
    progress(f"network: starting the gateway and {nodes} node process(es)")
    rows = []
    shutil.rmtree(out / f"network-{nodes}", ignore_errors=True)  # an earlier run's heads belong to another bundle
    with start_local_network(out / f"network-{nodes}", bundle.path, public_key, {s: head_dirs[s] for s in sources},
                             gateway_settings=gateway, timeout=300.0) as network:
        probe = Probe(network, metrics_port)
        for batch in config.batches:
            for clients in config.clients:
                row = {"nodes": nodes, **network_point(network, probe, images, clients, batch, config)}
                progress(f"network N={nodes} C={clients} B={batch}: {row['images_per_s']:.0f} images/s, "
                         f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, errors {row['errors']}")
                rows.append(row)
        opened = open_loop_point(network, images, nodes, config)
        progress(f"network N={nodes} open loop at {opened['offered_images_per_s']:g} images/s: "
                 f"p50 {opened['p50_ms']:.1f} ms, p99 {opened['p99_ms']:.1f} ms, errors {opened['errors']}")
    return rows, opened


def run_serving(out: str | Path, config: ServingBenchConfig, progress: Progress = log.info) -> dict[str, Any]:
    """Runs the whole benchmark; writes OUT/serving.json and OUT/serving.md (work files under OUT/work)."""
    from attribnet.bench.perf import random_images, synthetic_models
    from attribnet.bench.transfer import run_transfer
    from shared_backbone.model import bundle as bundle_lib
    from shared_backbone.model import signing
    from shared_backbone.model.heads import load_head

    out = Path(out)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    began, load_start = time.monotonic(), os.getloadavg()[0]
    bundle_path, public_key, head_dirs = synthetic_models(work / "models", config.image_size, max(config.nodes))
    bundle = bundle_lib.load_bundle(bundle_path, signing.load_public_key(public_key))
    heads = [load_head(head_dirs[s], bundle) for s in sorted(head_dirs)]
    images = random_images(config.images, config.image_size, seed=0)
    in_process, network, opened = [], [], []
    for nodes in config.nodes:  # the limit is measured just before and after its network points, on a shared machine
        before = in_process_limit(bundle, heads[:nodes], images, config.in_process_batch, config)
        rows, open_row = measure_network(work, bundle, public_key, head_dirs, nodes, images, config, progress)
        network += rows
        opened.append(open_row)
        in_process.append(merge_limits(before, in_process_limit(bundle, heads[:nodes], images, config.in_process_batch, config)))
        progress(f"in-process limit N={nodes}: {in_process[-1]['images_per_s']:.0f} images/s")
    transfer = None if config.skip_transfer else run_transfer(work / "transfer", config.transfer, config.image_size, progress)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": [load_start, os.getloadavg()[0]]},
        "settings": _settings(config), "in_process": in_process, "network": network, "open_loop": opened,
        "transfer": transfer,
        "wall_seconds": time.monotonic() - began,
    }
    report["targets"] = evaluate_targets(report)
    (out / "serving.json").write_text(json.dumps(report, indent=2))
    (out / "serving.md").write_text(render_markdown(report))
    return report


def _settings(config: ServingBenchConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


def _row(report: dict[str, Any], nodes: int, clients: int, batch: int) -> dict[str, Any] | None:
    for row in report["network"]:
        if (row["nodes"], row["clients"], row["batch"]) == (nodes, clients, batch):
            return row
    return None


def _limit(report: dict[str, Any], nodes: int) -> float | None:
    return next((row["images_per_s"] for row in report["in_process"] if row["nodes"] == nodes), None)


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 11 that this run measured: the value, the goal and whether it was met."""
    targets = []
    for batch, goal in ((16, 0.8), (1, 0.5)):
        row, limit = _row(report, 4, 8, batch), _limit(report, 4)
        if row and limit:
            ratio = row["images_per_s"] / limit
            targets.append({"target": f"N=4, C=8, B={batch}: network >= {goal:.0%} of the in-process limit",
                            "value": ratio, "goal": goal, "met": ratio >= goal})
    for row16 in [r for r in report["network"] if r["nodes"] == 16]:
        row1 = _row(report, 1, row16["clients"], row16["batch"])
        if row1:
            ratio = row16["p99_ms"] / row1["p99_ms"]
            targets.append({"target": f"C={row16['clients']}, B={row16['batch']}: p99 with 16 nodes <= 1.5x p99 with 1",
                            "value": ratio, "goal": 1.5, "met": ratio <= 1.5})
    by_nodes = {row["nodes"]: row for row in report.get("open_loop", [])}
    if 1 in by_nodes and 16 in by_nodes:
        ratio = by_nodes[16]["p99_ms"] / by_nodes[1]["p99_ms"]
        targets.append({"target": f"open loop, {by_nodes[1]['offered_images_per_s']:g} single images/s: p99 with 16 nodes "
                                  "<= 1.5x p99 with 1", "value": ratio, "goal": 1.5, "met": ratio <= 1.5})
    transfer = report.get("transfer")
    if transfer:
        reached = transfer.get("head_seconds_to_target")
        time_ratio = reached / transfer["full_fit_s"] if reached is not None else float("inf")
        gap = transfer["full_accuracy"] - transfer["head_accuracy"]
        targets.append({"target": "head within 1 point of the full model's accuracy in <= 25% of its training time "
                                  "(time to that val accuracy / the full model's fit time; test accuracy gap)",
                        "value": time_ratio, "accuracy_gap": gap, "goal": 0.25, "met": time_ratio <= 0.25 and gap <= 0.01})
    return targets


def render_markdown(report: dict[str, Any]) -> str:
    """The tables of BENCHMARKS.md's serving section."""
    from attribnet.bench.serving_report import render

    return render(report)

"""`attribnet bench soak`: closed-loop clients against a local network while its processes are killed.

Everything runs on loopback: a gateway and `nodes` node processes, started like an operator would
(`attribnet.launch.local_network`). By default the models are untrained synthetic ones and the
canary audit is off (random heads are not honest heads). With `network` (the folder an `attribnet
demo --out DIR` run wrote), the demo's trained bundle and heads serve instead, with the demo's
reference set, private reals and audit settings, so the audit runs as in production and the report
says whether it quarantined or flagged an honest node. `clients` threads each send
one Attribute request at a time until `seconds` have passed; a request that meets UNAVAILABLE or
a deadline (the coordinator is restarting) is retried within its own `request_budget`. Meanwhile
a chaos thread SIGKILLs one node process every `kill_every` seconds and restarts it, and restarts
the coordinator once, half-way. The report counts every request exactly once:

  succeeded  every registered node answered       partial  an answer with missing nodes (flagged)
  failed     an error after the retries            lost     sent but with no outcome at all

and lists the registry's node ids before and after, and the nodes quarantined or flagged at the end.
The bar: zero lost, an unchanged registry, and for a trained network nobody quarantined or flagged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")  # CANCELLED: in flight when the gateway stopped (a restart)
MAX_REQUESTS = 200_000  # a hard bound on the whole run, whatever `seconds` says


@dataclass
class SoakSettings:
    seconds: float = 120.0
    clients: int = 2
    nodes: int = 3
    image_size: int = 32
    images_per_request: int = 2
    kill_every: float = 15.0
    request_budget: float = 30.0  # seconds one request may spend on retries
    node_timeout: float = 1.0
    network: str = ""  # a demo's --out folder: serve its trained network, audits on


@dataclass
class Counts:
    sent: int = 0
    succeeded: int = 0
    partial: int = 0
    failed: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, error: str = "") -> None:
        with self.lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1


def _registry_entries(path: Path) -> list:
    from coordinator.registry import Registry

    registry = Registry(path)
    try:
        return registry.list()
    finally:
        registry.close()


def _node_ids(entries: list) -> list[str]:
    return sorted(entry.node_id for entry in entries)


def _verdicts(entries: list) -> dict[str, dict[str, str]]:
    """Node id -> reason, for every quarantined and every flagged node."""
    return {"quarantined": {e.node_id: e.quarantine for e in entries if e.quarantine},
            "flagged": {e.node_id: e.flag for e in entries if e.flag}}


def _one_request(gateway: str, images: list[bytes], settings: SoakSettings, counts: Counts) -> None:
    """Sends one request (retrying what a restart causes) and records its outcome."""
    from shared_backbone.runtime.gateway_client import AttributionClient, GatewayError

    deadline = time.monotonic() + settings.request_budget
    with counts.lock:
        counts.sent += 1
    while True:
        try:
            with AttributionClient(gateway, timeout=max(1.0, min(10.0, deadline - time.monotonic()))) as client:
                results = client.attribute(images)
            counts.add("partial" if any(r.missing_nodes for r in results) else "succeeded")
            return
        except GatewayError as exc:
            if exc.code.name not in RETRYABLE or time.monotonic() > deadline:
                counts.add("failed", exc.code.name)
                return
            with counts.lock:
                counts.retries += 1
            time.sleep(0.2)


def _client(gateway: str, pool: list[bytes], settings: SoakSettings, counts: Counts, stop: threading.Event,
            seed: int) -> None:
    """Sends requests of `images_per_request` images drawn afresh from the pool until stopped."""
    rng = random.Random(seed)
    while not stop.is_set() and counts.sent < MAX_REQUESTS:
        _one_request(gateway, rng.sample(pool, min(settings.images_per_request, len(pool))), settings, counts)


def _restart(network, name: str) -> None:
    from attribnet.launch.flower_processes import flower_env, start_process

    old = network.processes[name]
    network.processes[name] = start_process(name, list(old.popen.args), flower_env(), old.log_path)


def _kill(process) -> None:
    import os
    import signal

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.popen.wait(10)


def _chaos(network, settings: SoakSettings, stop: threading.Event, events: dict[str, int]) -> None:
    """Kills and restarts one node every `kill_every` s, and restarts the coordinator once, half-way."""
    from attribnet.launch.local_network import _serving

    nodes = sorted(name for name in network.processes if name.startswith("node-"))
    started, turn, coordinator_done = time.monotonic(), 0, False
    while not stop.wait(settings.kill_every):
        name = nodes[turn % len(nodes)]
        turn += 1
        _kill(network.processes[name])
        _restart(network, name)
        events["node_kills"] += 1
        log.info("soak: killed and restarted %s", name)
        if not coordinator_done and time.monotonic() - started >= settings.seconds / 2:
            network.processes["coordinator"].stop()
            _restart(network, "coordinator")
            end = time.monotonic() + 90
            while not _serving(network.gateway) and time.monotonic() < end and not stop.is_set():
                time.sleep(0.2)
            events["coordinator_restarts"] += 1
            coordinator_done = True
            log.info("soak: restarted the coordinator")


def _settle(network, nodes: int, timeout: float = 60.0) -> None:
    """Waits (bounded) until every node is healthy again and has heartbeated the gateway since the chaos stopped."""
    from attribnet.launch.local_network import nodes_registered

    end, since = time.monotonic() + timeout, datetime.now(timezone.utc)
    while not nodes_registered(network.gateway, nodes, since) and time.monotonic() < end:
        time.sleep(0.5)


POOL_PER_SOURCE = 16  # images a source contributes to a trained network's query pool


@dataclass
class SoakModels:
    """What the soaked network serves and what the clients send."""

    bundle: Path
    public_key: Path
    head_dirs: dict[str, Path]
    gateway_settings: dict[str, Any]
    reference: str
    pool: list[bytes]
    image_size: int


def _synthetic(out: Path, settings: SoakSettings) -> SoakModels:
    from attribnet.bench.perf import SYNTHETIC_GATEWAY, random_images, synthetic_models

    bundle, public_key, head_dirs = synthetic_models(out / "models", settings.image_size, settings.nodes)
    return SoakModels(bundle, public_key, head_dirs, dict(SYNTHETIC_GATEWAY), "",
                      random_images(4 * settings.images_per_request, settings.image_size, seed=3), settings.image_size)


def _demo_network(demo: Path) -> SoakModels:
    """A demo's trained network (`attribnet demo --out DEMO`): its bundle, heads, reference set and audit
    settings as the demo's coordinator used them, and a pool of its zoo's images, every source mixed."""
    from shared_backbone.config import read_yaml

    coordinator_yaml = demo / "network" / "coordinator.yaml"
    if not coordinator_yaml.is_file():
        raise FileNotFoundError(f"{coordinator_yaml} not found: --network takes the --out folder of an `attribnet demo` run")
    coordinator = read_yaml(coordinator_yaml)
    head_dirs = {p.parent.name.removeprefix("node-"): p for p in sorted((demo / "network").glob("node-*/head"))}
    if not head_dirs:
        raise FileNotFoundError(f"no node heads under {demo / 'network'} (node-SOURCE/head)")
    rng = random.Random(3)
    pool = []
    for folder in sorted(p for p in (demo / "zoo").iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        pool += [f.read_bytes() for f in rng.sample(files, min(POOL_PER_SOURCE, len(files)))]
    size = json.loads((demo / "zoo" / "manifest.json").read_text())["image_size"]
    return SoakModels(Path(coordinator["bundle"]), Path(coordinator["public_key"]), head_dirs,
                      {"audit": coordinator["gateway"]["audit"]}, coordinator.get("reference", ""), pool, size)


def run_soak(out: str | Path, settings: SoakSettings) -> dict[str, Any]:
    """Runs the soak and writes OUT/soak.json; returns the report."""
    from attribnet.launch.local_network import start_local_network

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = _demo_network(Path(settings.network)) if settings.network else _synthetic(out, settings)
    settings = dataclasses.replace(settings, nodes=len(models.head_dirs), image_size=models.image_size)
    counts, events = Counts(), {"node_kills": 0, "coordinator_restarts": 0}
    gateway_settings = {"node_timeout": settings.node_timeout, "stale_after": 5.0, **models.gateway_settings}
    began = time.monotonic()
    with start_local_network(out / "network", models.bundle, models.public_key, models.head_dirs,
                             gateway_settings=gateway_settings, reference=models.reference) as network:
        before = _node_ids(_registry_entries(out / "network" / "registry.sqlite"))
        stop = threading.Event()
        threads = [threading.Thread(target=_client, args=(network.gateway, models.pool, settings, counts, stop, i), daemon=True)
                   for i in range(settings.clients)]
        chaos = threading.Thread(target=_chaos, args=(network, settings, stop, events), daemon=True)
        for thread in [*threads, chaos]:
            thread.start()
        stop.wait(settings.seconds)
        stop.set()
        for thread in [chaos, *threads]:
            thread.join(settings.request_budget + 100)
        _settle(network, len(models.head_dirs))
        ended = _registry_entries(out / "network" / "registry.sqlite")
        after = _node_ids(ended)
    report = {
        "seconds": round(time.monotonic() - began, 1), "settings": asdict(settings), "sent": counts.sent,
        "succeeded": counts.succeeded, "partial": counts.partial, "failed": counts.failed,
        "lost": counts.sent - counts.succeeded - counts.partial - counts.failed, "retries": counts.retries,
        "errors": counts.errors, **events, "registry_before": before, "registry_after": after,
        "registry_unchanged": before == after, "audited": bool(gateway_settings["audit"].get("enabled", True)),
        **_verdicts(ended),
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report

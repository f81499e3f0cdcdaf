"""A whole attribution network on this machine: one gateway and one process per node, on loopback.

Each role runs as its own `attribnet ... serve` process from a YAML config written here, exactly as
an operator would start it, so whatever uses this (the performance benchmark, the demo) measures
the real thing: separate processes talking gRPC.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from attribnet.launch.enrolment import enrol_local_nodes
from attribnet.launch.flower_processes import FlowerProcess, flower_env, free_port, start_process

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0


class LocalNetworkError(RuntimeError):
    """A process that did not come up in time or exited; the message carries its log tail."""


@dataclass
class LocalNetwork:
    """Running gateway + nodes; `stop()` ends every process (also on exceptions via `with`)."""

    workdir: Path
    gateway: str
    processes: dict[str, FlowerProcess] = field(default_factory=dict)

    def __enter__(self) -> "LocalNetwork":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Nodes first (each leaves the registry on SIGTERM while the gateway still answers), the gateway last."""
        for process in reversed(self.processes.values()):
            process.stop()


def _serving(target: str) -> bool:
    import grpc

    from shared_backbone.runtime import rpc

    channel = rpc.open_channel(target)
    try:
        return rpc.check_health(channel, timeout=1.0) == "SERVING"
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def _wait_serving(target: str, process: FlowerProcess, deadline: float) -> None:
    while not _serving(target):
        if not process.alive():
            raise LocalNetworkError(f"{process.name} exited with code {process.popen.returncode}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            raise LocalNetworkError(f"{process.name} not serving on {target} in time:\n{process.log_tail()}")
        time.sleep(0.2)


def nodes_registered(gateway: str, count: int, since: datetime) -> bool:
    """`count` nodes are healthy and have heartbeated this gateway since `since`.

    A registry kept from a Flower run already lists the nodes as healthy; only a node that has
    registered with this gateway holds the credential the gateway presents to its HeadService.
    """
    from shared_backbone.runtime.gateway_client import AttributionClient, GatewayError

    with AttributionClient(gateway, timeout=2.0) as client:
        try:
            sources = client.list_sources()
        except GatewayError:
            return False
    return sum(s["status"] == "healthy" and _after(s.get("last_heartbeat"), since) for s in sources) >= count


def _after(timestamp: str | None, since: datetime) -> bool:
    return bool(timestamp) and datetime.fromisoformat(timestamp.replace("Z", "+00:00")) >= since


def _write_coordinator_yaml(workdir: Path, bundle: str | Path, public_key: str | Path, port: int,
                            gateway_settings: dict | None, reference: str | Path = "") -> Path:
    path = workdir / "coordinator.yaml"
    path.write_text(yaml.safe_dump({
        "bundle": str(bundle),
        "public_key": str(public_key),
        "reference": str(reference) if reference else "",
        "registry": str(workdir / "registry.sqlite"),
        "gateway": {"host": "127.0.0.1", "port": port, "heartbeat_interval": 1.0, **(gateway_settings or {})},
    }))
    return path


def _write_node_yaml(workdir: Path, source: str, head_dir: Path, bundle: str | Path, public_key: str | Path,
                     node_port: int, gateway: str, node_settings: dict | None) -> Path:
    """The node's config, with the head copied into its own state folder (kept when already there)."""
    state = workdir / f"node-{source}"
    if not (state / "head").exists():
        shutil.copytree(head_dir, state / "head")
    path = workdir / f"node-{source}.yaml"
    path.write_text(yaml.safe_dump({
        "source": source, "backbone": str(bundle), "public_key": str(public_key), "state_dir": str(state),
        "serve": {"host": "127.0.0.1", "port": node_port, "coordinator": gateway, "max_backoff": 1.0,
                  **(node_settings or {})},
    }))
    return path


def _wait_ready(network: LocalNetwork, targets: dict[str, str], nodes: int, deadline: float, since: datetime) -> None:
    """Every process reports SERVING, then every node has registered with the gateway."""
    for name, target in targets.items():
        _wait_serving(target, network.processes[name], deadline)
    while not nodes_registered(network.gateway, nodes, since):
        if time.monotonic() > deadline:
            raise LocalNetworkError(f"nodes did not register in time:\n{network.processes['coordinator'].log_tail()}")
        time.sleep(0.2)


def start_local_network(
    workdir: str | Path,
    bundle: str | Path,
    public_key: str | Path,
    head_dirs: dict[str, Path],
    *,
    gateway_settings: dict | None = None,
    node_settings: dict | None = None,
    timeout: float = START_TIMEOUT,
    port: int = 0,
    node_ports: dict[str, int] | None = None,
    reference: str | Path = "",
) -> LocalNetwork:
    """Starts the gateway and one node per head (head folders are copied into node state folders).

    `port` / `node_ports` fix the gateway's and nodes' ports (0 / absent = any free port). Every
    node id (= its source) not yet bound in WORKDIR/registry.sqlite is enrolled, its token written
    to WORKDIR/node-SOURCE/enrolment.token. `gateway_settings` and `node_settings` add keys to the
    coordinator's `gateway:` and every node's `serve:` section. `reference`: the reference set the
    gateway hands nodes that join later (`attribnet node join`).
    """
    from node.state import ENROLMENT_TOKEN_FILE

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    enrol_local_nodes(workdir / "registry.sqlite", {
        source: (source, workdir / f"node-{source}" / ENROLMENT_TOKEN_FILE) for source in head_dirs
    })
    port = port or free_port()
    gateway = f"127.0.0.1:{port}"
    coordinator_yaml = _write_coordinator_yaml(workdir, bundle, public_key, port, gateway_settings, reference)
    env = flower_env()
    python = [sys.executable, "-m", "attribnet.cli"]
    network = LocalNetwork(workdir, gateway)
    deadline, since = time.monotonic() + timeout, datetime.now(timezone.utc)
    try:
        network.processes["coordinator"] = start_process(
            "coordinator", [*python, "coordinator", "serve", "--config", str(coordinator_yaml)], env, workdir / "coordinator.log"
        )
        targets = {"coordinator": gateway}
        for source, head_dir in sorted(head_dirs.items()):
            node_port = (node_ports or {}).get(source) or free_port()
            node_yaml = _write_node_yaml(workdir, source, head_dir, bundle, public_key, node_port, gateway, node_settings)
            name = f"node-{source}"
            network.processes[name] = start_process(name, [*python, "node", "serve", "--config", str(node_yaml)], env, workdir / f"{name}.log")
            targets[name] = f"127.0.0.1:{node_port}"
        _wait_ready(network, targets, len(head_dirs), deadline, since)
    except BaseException:
        network.stop()
        raise
    log.info("local network up: gateway %s with %d node(s)", gateway, len(head_dirs))
    return network

"""Running one federation (the coordinator's ServerApp + every node's ClientApp) from Python.

Three ways, one result (`coordinator.flower.results.FederationResult`, also written as JSON):
  simulation   Flower's Simulation Engine in this process (Ray), one virtual node per settings dict
  local        a real SuperLink + one SuperNode per node on loopback, the app submitted by `flwr run`
  superlink    an existing SuperLink (SuperNodes started elsewhere, by each organisation)
This module wires both roles, so it lives above them (the CLI and the demo call it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from attribnet.launch import flower_processes as fp
from attribnet.launch.flower_deployment import LocalDeployment
from coordinator.config import CoordinatorConfig
from coordinator.flower.results import FederationError, FederationResult, read_result, write_result
from shared_backbone.config import to_dict

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]  # holds pyproject.toml with [tool.flwr.app]


def simulation_backend_config(cpus_per_node: float = 1.0) -> dict[str, Any]:
    """Ray settings for a small machine: every CPU, no dashboard, `cpus_per_node` per virtual node.

    Node logs stay in the Ray workers (their errors reach the result as error replies).
    """
    return {
        "client_resources": {"num_cpus": cpus_per_node, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": False},
    }


def run_simulation(config: CoordinatorConfig, nodes: Sequence[Mapping[str, Any]], *, cpus_per_node: float = 1.0) -> FederationResult:
    """One federation in Flower's Simulation Engine; node i runs with the node-config `nodes[i]`."""
    from flwr.simulation import run_simulation as flower_run_simulation

    from coordinator.server_app import make_server_app
    from node.client_app import make_client_app

    if not nodes:
        raise FederationError("simulation needs at least one node")
    for name, value in fp.OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger("flwr").propagate = False  # flwr prints through its own handler; no duplicates
    config = dataclasses.replace(
        config, federation=dataclasses.replace(config.federation, min_nodes=max(config.federation.min_nodes, len(nodes)))
    )
    result_file = Path(config.federation.result_file)
    if result_file.exists():
        result_file.unlink()
    started = time.monotonic()
    try:
        flower_run_simulation(
            server_app=make_server_app(config),
            client_app=make_client_app([dict(n) for n in nodes]),
            num_supernodes=len(nodes),
            backend_config=simulation_backend_config(cpus_per_node),
        )
    except Exception as exc:  # the ServerApp's own error is in the result file
        if not result_file.exists():
            raise FederationError(f"simulation failed before the ServerApp wrote {result_file}: {exc}") from exc
    seconds = time.monotonic() - started
    log.info("simulation with %d node(s) took %.1f s", len(nodes), seconds)
    result = read_result(result_file)
    result.flower = {"engine": "simulation", "nodes": len(nodes), "seconds": round(seconds, 1)}
    write_result(result_file, result)
    return result


def write_coordinator_yaml(config: CoordinatorConfig, path: str | Path) -> Path:
    """The config as YAML for the ServerApp process (which reads it by path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def submit_run(config_path: str | Path, result_file: str | Path, env: Mapping[str, str], *, app_dir: str | Path = PROJECT_DIR,
               workdir: str | Path | None = None, timeout: float = 900.0, overrides: Mapping[str, Any] | None = None) -> FederationResult:
    """`flwr run` against the connection in env's FLWR_HOME, waits (bounded) for the run, reads its result."""
    result_file = Path(result_file).resolve()
    if result_file.exists():
        result_file.unlink()
    run_config = {
        "coordinator-config": str(Path(config_path).resolve()),
        "workdir": str(Path(workdir or os.getcwd()).resolve()),
        "result-file": str(result_file),
        **(overrides or {}),
    }
    run_id = fp.flwr_run(app_dir, run_config, env)
    log.info("submitted Flower run %d", run_id)
    deadline = time.monotonic() + timeout
    _wait_for_result_file(result_file, run_id, env, deadline)
    status = fp.wait_run_finished(run_id, env, max(deadline - time.monotonic(), 30.0), poll=1.0)
    log.info("Flower run %d: %s", run_id, status)
    if not result_file.exists():
        raise FederationError(f"Flower run {run_id} ended {status} without writing {result_file}")
    result = read_result(result_file)
    result.flower = {"engine": "deployment", "run_id": run_id, "status": status}
    write_result(result_file, result)
    if status != "finished:completed" and result.status == "completed":
        raise FederationError(f"Flower run {run_id} ended {status} although the result says completed")
    return result


def _wait_for_result_file(path: Path, run_id: int, env: Mapping[str, str], deadline: float, status_every: float = 15.0) -> None:
    """Waits for the ServerApp's result file; asks Flower for the run status only now and then.

    Each `flwr ls` is a Python process that competes with the nodes' training for the CPU.
    """
    next_status = time.monotonic() + status_every
    while time.monotonic() < deadline and not path.exists():
        if time.monotonic() >= next_status:
            if fp.run_status(run_id, env).startswith(fp.TERMINAL_STATUS_PREFIX):
                return
            next_status = time.monotonic() + status_every
        time.sleep(0.5)


def run_local_deployment(config: CoordinatorConfig, nodes: Sequence[Mapping[str, Any]], workdir: str | Path, *,
                         timeout: float = 900.0, tls: tuple[str, str, str] | None = None,
                         supernode_auth: bool = False) -> FederationResult:
    """A SuperLink and one SuperNode per node on loopback, the ServerApp submitted with `flwr run`.

    `tls` = (ca_cert, server_cert, server_key) runs the SuperLink over HTTPS (else plaintext);
    `supernode_auth` admits only SuperNodes whose (generated) keys were registered (needs `tls`).
    """
    workdir = Path(workdir).resolve()
    config_path = write_coordinator_yaml(config, workdir / "coordinator.yaml")
    with LocalDeployment.start(workdir, [dict(n) for n in nodes], tls=tls, supernode_auth=supernode_auth) as deployment:
        result = submit_run(
            config_path, config.federation.result_file, deployment.env, workdir=os.getcwd(), timeout=timeout,
            overrides={"min-nodes": max(config.federation.min_nodes, len(nodes))},
        )
    return result


def enrol_nodes(config: CoordinatorConfig, nodes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The node configs, each without its own token enrolled in the coordinator's registry (token in its state-dir)."""
    from attribnet.launch.enrolment import enrol_local_nodes
    from node.state import ENROLMENT_TOKEN_FILE

    nodes = [dict(n) for n in nodes]
    wanted = {}
    for node in nodes:
        if node.get("enrolment-token-file") or not node.get("state-dir") or not node.get("source"):
            continue
        token = Path(str(node["state-dir"])) / ENROLMENT_TOKEN_FILE
        wanted[str(node.get("node-id") or node["source"])] = (str(node["source"]), token)
    enrol_local_nodes(config.registry, wanted)
    return nodes


def run_federation(config: CoordinatorConfig, nodes: Sequence[Mapping[str, Any]], *, mode: str = "simulation",
                   workdir: str | Path | None = None, timeout: float = 900.0) -> FederationResult:
    """The demo's entry point: `mode` is `simulation` (in-process) or `local` (real processes on loopback).

    `nodes` are node-config dicts (keys as in node/client_app.py: source, data-dir, state-dir,
    public-key, endpoint, ...). Returns the result; per-node outcomes are in `.nodes`. Both sides
    run here, so nodes without an `enrolment-token-file` are enrolled first (`enrol_nodes`).
    """
    nodes = enrol_nodes(config, nodes)
    if mode == "simulation":
        return run_simulation(config, nodes)
    if mode == "local":
        return run_local_deployment(config, nodes, workdir or Path(config.federation.result_file).parent, timeout=timeout)
    raise ValueError(f"federation mode must be simulation or local, got {mode!r}")

"""Flower's Deployment Engine on loopback: a real SuperLink, two SuperNodes, the app submitted by `flwr run`."""

from __future__ import annotations

import time
from pathlib import Path

from attribnet import flower_processes as fp
from tests.test_federation_sim import check_registered, coordinator_config, make_node_folders, make_reference

SOURCES = ("tconv_a", "nnconv_a")


def test_deployment_trains_and_registers_both_nodes(tiny_zoo, zoo_bundle, keypair, tmp_path):
    from attribnet.federation import run_federation

    nodes = make_node_folders(tiny_zoo, tmp_path / "nodes", SOURCES, keypair)
    reference = make_reference(tiny_zoo, tmp_path / "reference")
    config = coordinator_config(zoo_bundle, keypair, tmp_path, reference, min_nodes=len(nodes))
    started = time.monotonic()
    result = run_federation(config, nodes, mode="local", workdir=tmp_path / "deploy", timeout=150.0)
    print(f"deployment cycle with {len(nodes)} SuperNodes: {time.monotonic() - started:.1f} s")
    assert result.flower["engine"] == "deployment" and result.flower["status"] == "finished:completed"
    assert result.status == "completed", result.error
    check_registered(result, config, nodes, zoo_bundle)
    assert not result.problems
    logs = tmp_path / "deploy" / "flower"
    assert (logs / "superlink.log").is_file() and (logs / "supernode-0.log").is_file()


def test_processes_are_gone_after_the_deployment_stops(tmp_path):
    """Process-group teardown: the SuperLink's children (superexec) go with it."""
    deployment = fp.LocalDeployment.start(tmp_path, [])
    (superlink,) = deployment.processes
    assert superlink.alive()
    deployment.stop()
    assert not superlink.alive()
    time.sleep(0.5)
    import os
    import signal

    try:
        os.killpg(superlink.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "processes of the SuperLink's group survived the stop"

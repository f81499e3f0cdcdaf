"""The coordinator's side of a Flower run, as plain functions the ServerApp strings together.

One run: wait (bounded) for the nodes, send each the signed bundle with the run's training
config and a verifiable pointer to the reference negative set (`train.fit_head`), collect the
replies within a deadline, match them to requests by `reply_to_message_id`, register every
head that came back in the registry, and write a result JSON that names every node that failed,
was refused or timed out (`flwr run` exits 0 even when a ServerApp raised, so the file is the
run's verdict). Optional first: FedAvg rounds of the primary module over the nodes that opt in
(`train.finetune`), published as a new bundle version whose parent is the old one.
"""

from __future__ import annotations

import logging
import time

from coordinator.config import CoordinatorConfig
from coordinator.flower.fedavg import run_finetune
from coordinator.flower.head_round import run_head_round
from coordinator.flower.messaging import GridLike, wait_for_nodes
from coordinator.flower.results import FederationResult, utc_now, write_result

log = logging.getLogger(__name__)


def run_federation_round(grid: GridLike, config: CoordinatorConfig) -> FederationResult:
    """Everything one ServerApp run does; always writes `federation.result_file`, even on failure."""
    from coordinator.registry import Registry
    from coordinator.validation import gateway_policy
    from shared_backbone.model import signing
    from shared_backbone.model.bundle import load_configured_bundle

    fed = config.federation
    result = FederationResult(started=utc_now())
    started = time.monotonic()
    try:
        bundle = load_configured_bundle(config.bundle, config.public_key)
        result.backbone = {"path": str(bundle.path), "digest": bundle.digest, "version": bundle.version}
        nodes = wait_for_nodes(grid, fed.min_nodes, fed.wait_for_nodes)
        if fed.finetune_rounds > 0:
            bundle, result.finetune = run_finetune(
                grid, config, bundle, nodes, signing.load_private_key(config.private_key), fed.bundles_dir
            )
            result.backbone = {"path": str(bundle.path), "digest": bundle.digest, "version": bundle.version,
                               "parent": bundle.manifest.get("parent")}
        registry = Registry(config.registry, policy=gateway_policy(config.gateway))
        try:
            result.nodes = run_head_round(grid, config, bundle, nodes, registry)
        finally:
            registry.close()
        result.status = "completed"
    except Exception as exc:
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        result.finished = utc_now()
        result.seconds = round(time.monotonic() - started, 1)
        write_result(fed.result_file, result)
        log.info(
            "federation %s: %d registered, %d not (%s); result in %s", result.status, len(result.registered),
            len(result.problems), ", ".join(f"{n.source or n.flower_node_id}: {n.status}" for n in result.problems) or "-",
            fed.result_file,
        )
    return result

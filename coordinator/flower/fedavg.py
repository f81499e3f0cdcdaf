"""Opt-in FedAvg fine-tuning of the primary module, published as a child bundle (parent recorded)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from coordinator.config import CoordinatorConfig
from coordinator.flower.head_round import reference_pointer, train_record
from coordinator.flower.messaging import GridLike, send_and_collect
from coordinator.flower.results import TIMED_OUT, FederationError
from shared_backbone.model.bundle import Bundle
from shared_backbone.protocol import flower_messages
from shared_backbone.protocol.flower_messages import FINETUNE, FINETUNE_RESULT, FINETUNE_WEIGHTS, RUN_RECORD, TRAIN_RECORD

log = logging.getLogger(__name__)


def fedavg(weight_sets: list[list[np.ndarray]], counts: list[int]) -> list[np.ndarray]:
    """The example-weighted average of several models' weight lists (same architecture)."""
    if not weight_sets:
        raise FederationError("nothing to average")
    shapes = [w.shape for w in weight_sets[0]]
    for index, weights in enumerate(weight_sets[1:], 1):
        if [w.shape for w in weights] != shapes:
            raise FederationError(f"update {index} has another architecture than update 0")
    total = float(sum(counts))
    if total <= 0:
        raise FederationError("fine-tuning updates report no training examples")
    return [
        sum(weights[i].astype(np.float64) * (count / total) for weights, count in zip(weight_sets, counts)).astype(weight_sets[0][i].dtype)
        for i in range(len(shapes))
    ]


def finetune_content(bundle: Bundle, config: CoordinatorConfig, weights: list[np.ndarray] | None, reference: dict[str, str] | None,
                     round_number: int) -> RecordDict:
    """`train.finetune`: the signed bundle (architecture + input spec) and the current global weights."""
    fed = config.federation
    train = dataclasses.replace(config.train, epochs=fed.finetune_epochs, learning_rate=fed.finetune_learning_rate,
                                min_epochs=min(config.train.min_epochs, fed.finetune_epochs))
    content = flower_messages.pack_bundle(bundle)
    content[TRAIN_RECORD] = train_record(train)
    run: dict[str, Any] = {"round": f"finetune-{round_number}", "real_sources": list(fed.reference_real_sources)}
    if reference:
        run.update({"reference_path": reference["path"], "reference_digest": reference["digest"]})
    content[RUN_RECORD] = ConfigRecord(run)
    if weights is not None:
        content[FINETUNE_WEIGHTS] = flower_messages.weights_to_record(weights)
    return content


def run_finetune(grid: GridLike, config: CoordinatorConfig, bundle: Bundle, nodes: list[int], private_key: Any,
                 out_dir: str | Path) -> tuple[Bundle, dict[str, Any]]:
    """FedAvg rounds over opted-in nodes; publishes the average as a new bundle (parent = `bundle`)."""
    from shared_backbone.model.bundle import write_bundle

    fed = config.federation
    reference = reference_pointer(config)
    primary = bundle.load_primary()
    weights = [np.asarray(w) for w in primary.get_weights()]
    rounds: list[dict[str, Any]] = []
    for number in range(1, fed.finetune_rounds + 1):
        contents = {node: finetune_content(bundle, config, weights, reference, number) for node in nodes}
        replies = send_and_collect(grid, contents, FINETUNE, timeout=fed.round_timeout, poll=fed.poll_interval)
        updates, counts, report = [], [], {}
        for node, reply in replies.items():
            if reply is None:
                report[str(node)] = TIMED_OUT
            elif reply.has_error():
                report[str(node)] = f"failed: {reply.error.reason}"
            elif FINETUNE_WEIGHTS not in reply.content.array_records:
                report[str(node)] = "declined"
            else:
                info = reply.content.config_records.get(FINETUNE_RESULT, ConfigRecord())
                update = flower_messages.record_to_weights(reply.content.array_records[FINETUNE_WEIGHTS])
                updates.append(update)
                counts.append(int(info.get("num_examples", 0)))
                report[str(node)] = f"updated ({counts[-1]} examples)"
        log.info("fine-tuning round %d: %s", number, report)
        if len(updates) < max(fed.finetune_min_nodes, 1):
            raise FederationError(
                f"fine-tuning round {number}: {len(updates)} update(s), {fed.finetune_min_nodes} required ({report})"
            )
        weights = fedavg(updates, counts)
        rounds.append({"round": number, "nodes": report, "examples": int(sum(counts))})
    primary.set_weights(weights)
    version = f"{bundle.version}-ft{fed.finetune_rounds}"
    new_bundle = write_bundle(
        Path(out_dir) / version, primary, bundle.input_spec, private_key, version=version, parent=bundle.digest,
        metrics={"finetune_rounds": rounds}, source={"finetuned_from": bundle.digest},
    )
    log.info("published fine-tuned bundle %s (version %s, parent %s)", new_bundle.short_digest, version, bundle.short_digest)
    return new_bundle, {"rounds": rounds, "bundle": str(new_bundle.path), "digest": new_bundle.digest,
                        "version": version, "parent": bundle.digest}

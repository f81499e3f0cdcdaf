"""Opt-in federated fine-tuning of the primary module, published as a child bundle (parent recorded).

No single node controls the next backbone: each update is checked against the global model
(`check_update`: same arrays, shapes and dtypes, all finite), example counts are clipped, the
aggregate is robust (`aggregate`: coordinate-wise trimmed mean or median), and the result is
signed and published only after it passes the evaluation gate (`gate.py`) on the coordinator's
own held-out data.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from coordinator.config import CoordinatorConfig, FederationConfig
from coordinator.flower.head_round import reference_pointer, train_record
from coordinator.flower.messaging import GridLike, send_and_collect
from coordinator.flower.results import TIMED_OUT, FederationError
from shared_backbone.config import TrainConfig
from shared_backbone.model.bundle import Bundle
from shared_backbone.protocol import flower_messages
from shared_backbone.protocol.flower_messages import (FINETUNE, FINETUNE_RESULT, FINETUNE_WEIGHTS, OBJECTIVE_FIELD, RUN_RECORD,
                                                      TRAIN_RECORD)

log = logging.getLogger(__name__)


AGGREGATES = ("trimmed_mean", "median", "mean")


def fedavg(weight_sets: list[list[np.ndarray]], counts: list[int]) -> list[np.ndarray]:
    """The example-weighted average of several models' weight lists (same architecture)."""
    return aggregate(weight_sets, counts, "mean")


def check_update(update: list[np.ndarray], reference: list[np.ndarray]) -> str | None:
    """Why an update cannot be averaged into `reference` (another architecture, dtype, NaN/inf), or None."""
    if len(update) != len(reference):
        return f"{len(update)} weight arrays, the global model has {len(reference)}"
    for index, (got, want) in enumerate(zip(update, reference)):
        if got.shape != want.shape or got.dtype != want.dtype:
            return f"array {index} is {got.dtype}{list(got.shape)}, the global model's is {want.dtype}{list(want.shape)}"
        if not np.all(np.isfinite(got)):
            return f"array {index} holds NaN or infinity"
    return None


def clip_count(value: object, cap: int) -> int:
    """A node's example count as a weight: an integer in [1, cap] (anything else counts as 1)."""
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError):
        return 1
    return min(max(count, 1), cap)


def aggregate(weight_sets: list[list[np.ndarray]], counts: list[int], method: str = "trimmed_mean",
              trim_fraction: float = 0.2) -> list[np.ndarray]:
    """Coordinate-wise robust aggregate of checked updates (`mean` weights by the clipped counts)."""
    if not weight_sets:
        raise FederationError("nothing to average")
    for index, weights in enumerate(weight_sets[1:], 1):
        problem = check_update(weights, weight_sets[0])
        if problem:
            raise FederationError(f"update {index} has another architecture than update 0 ({problem})")
    if method not in AGGREGATES:
        raise FederationError(f"federation.aggregate must be one of {AGGREGATES}, got {method!r}")
    total = float(sum(counts))
    if total <= 0:
        raise FederationError("fine-tuning updates report no training examples")
    out = []
    for i in range(len(weight_sets[0])):
        stack = np.stack([weights[i].astype(np.float64) for weights in weight_sets])
        if method == "mean":
            value = np.tensordot(np.asarray(counts, dtype=np.float64) / total, stack, axes=1)
        elif method == "median":
            value = np.median(stack, axis=0)
        else:
            cut = min(int(trim_fraction * len(stack)), (len(stack) - 1) // 2)
            value = np.sort(stack, axis=0)[cut:len(stack) - cut].mean(axis=0)
        out.append(value.astype(weight_sets[0][i].dtype))
    return out


def finetune_train(train: TrainConfig, fed: FederationConfig) -> TrainConfig:
    """The training a node runs for one round: the coordinator's, with fine-tuning's epochs and learning rate."""
    return dataclasses.replace(train, epochs=fed.finetune_epochs, learning_rate=fed.finetune_learning_rate,
                               min_epochs=min(train.min_epochs, fed.finetune_epochs))


def finetune_content(bundle: Bundle, config: CoordinatorConfig, weights: list[np.ndarray] | None, reference: dict[str, str] | None,
                     round_number: int) -> RecordDict:
    """`train.finetune`: the signed bundle (architecture + input spec) and the current global weights."""
    fed = config.federation
    train = finetune_train(config.train, fed)
    content = flower_messages.pack_bundle(bundle)
    content[TRAIN_RECORD] = train_record(train)
    run: dict[str, Any] = {"round": f"finetune-{round_number}", "real_sources": list(fed.reference_real_sources),
                           OBJECTIVE_FIELD: fed.finetune_objective}
    if reference:
        run.update({"reference_path": reference["path"], "reference_digest": reference["digest"]})
    content[RUN_RECORD] = ConfigRecord(run)
    if weights is not None:
        content[FINETUNE_WEIGHTS] = flower_messages.weights_to_record(weights)
    return content


def collect_updates(replies: dict, reference: list[np.ndarray], cap: int) -> tuple[list, list[int], dict[str, str]]:
    """The updates that pass `check_update`, their clipped counts, and what happened to every node."""
    updates, counts, report = [], [], {}
    for node, reply in replies.items():
        if reply is None:
            report[str(node)] = TIMED_OUT
        elif reply.has_error():
            report[str(node)] = f"failed: {str(reply.error.reason)[:300]}"
        elif FINETUNE_WEIGHTS not in reply.content.array_records:
            report[str(node)] = "declined"
        else:
            info = reply.content.config_records.get(FINETUNE_RESULT, ConfigRecord())
            try:
                update = flower_messages.record_to_weights(reply.content.array_records[FINETUNE_WEIGHTS])
            except (ValueError, TypeError) as exc:
                report[str(node)] = f"refused: unreadable weights ({str(exc)[:200]})"
                continue
            problem = check_update(update, reference)
            if problem:
                report[str(node)] = f"refused: {problem}"
                continue
            updates.append(update)
            counts.append(clip_count(info.get("num_examples", 0), cap))
            report[str(node)] = f"updated ({counts[-1]} examples)"
    return updates, counts, report


def run_finetune(grid: GridLike, config: CoordinatorConfig, bundle: Bundle, nodes: list[int], private_key: Any,
                 out_dir: str | Path) -> tuple[Bundle, dict[str, Any]]:
    """Robust averaging rounds over opted-in nodes; publishes the result (parent = `bundle`) if it passes the gate."""
    fed = config.federation
    reference = reference_pointer(config)

    def collect(number: int, weights: list[np.ndarray]) -> tuple[list[list[np.ndarray]], list[int], dict[str, str]]:
        contents = {node: finetune_content(bundle, config, weights, reference, number) for node in nodes}
        replies = send_and_collect(grid, contents, FINETUNE, timeout=fed.round_timeout, poll=fed.poll_interval)
        return collect_updates(replies, weights, fed.max_examples)

    return averaging_rounds(config, bundle, collect, private_key, out_dir)


RoundUpdates = Callable[[int, list[np.ndarray]], tuple[list[list[np.ndarray]], list[int], dict[str, str]]]


def averaging_rounds(config: CoordinatorConfig, bundle: Bundle, collect: RoundUpdates, private_key: Any,
                     out_dir: str | Path) -> tuple[Bundle, dict[str, Any]]:
    """`federation.finetune_rounds` rounds: `collect(round, global weights)` gives the checked updates, their
    clipped example counts and what happened to every node; their robust aggregate is the next global model.
    Then the coordinator's step, the gate and, if it passes, the signed child bundle (`publish_if_gated`)."""
    fed = config.federation
    weights = [np.asarray(w) for w in bundle.load_primary().get_weights()]
    rounds: list[dict[str, Any]] = []
    for number in range(1, fed.finetune_rounds + 1):
        updates, counts, report = collect(number, weights)
        log.info("fine-tuning round %d: %s", number, report)
        if len(updates) < max(fed.finetune_min_nodes, 1):
            raise FederationError(
                f"fine-tuning round {number}: {len(updates)} update(s), {fed.finetune_min_nodes} required ({report})"
            )
        weights = aggregate(updates, counts, fed.aggregate, fed.trim_fraction)
        rounds.append({"round": number, "nodes": report, "examples": int(sum(counts)), "aggregate": fed.aggregate})
    return publish_if_gated(config, bundle, coordinator_step(config, bundle, weights), rounds, private_key, out_dir)


def coordinator_step(config: CoordinatorConfig, bundle: Bundle, weights: list[np.ndarray]) -> list[np.ndarray]:
    """The aggregate as the coordinator publishes it: with the `attribution` objective the nodes moved only
    the trunk, so the detector's tail is refit on the coordinator's own data over that trunk."""
    if config.federation.finetune_objective != "attribution":
        return weights
    from coordinator.flower.gate import coordinator_split
    from coordinator.train_primary import refit_tail

    index, splits = coordinator_split(config, bundle.input_spec)
    primary = bundle.load_primary()
    primary.set_weights(weights)
    refit_tail(primary, index, splits, bundle.input_spec, config)
    return [np.asarray(w) for w in primary.get_weights()]


def publish_if_gated(config: CoordinatorConfig, bundle: Bundle, weights: list[np.ndarray], rounds: list[dict[str, Any]],
                     private_key: Any, out_dir: str | Path) -> tuple[Bundle, dict[str, Any]]:
    """The aggregated weights as a signed child bundle (parent = `bundle`) if they pass the evaluation gate."""
    from coordinator.flower.gate import evaluation_gate
    from shared_backbone.model.bundle import write_bundle

    gate = evaluation_gate(config, bundle, weights)
    if not gate["passed"]:
        log.warning("fine-tuned primary failed the evaluation gate (%s); keeping backbone %s", gate, bundle.short_digest)
        return bundle, {"rounds": rounds, "published": False, "gate": gate}
    primary = bundle.load_primary()
    primary.set_weights(weights)
    version = f"{bundle.version}-ft{len(rounds)}"
    trained_on = {part: [*sources, "fine-tuned by the nodes' updates"] for part, sources in bundle.training_sources.items()}
    new_bundle = write_bundle(
        Path(out_dir) / version, primary, bundle.input_spec, private_key, version=version, parent=bundle.digest,
        metrics={"finetune_rounds": rounds, "gate": gate, **({"trained_on": trained_on} if trained_on else {})},
        source={"finetuned_from": bundle.digest}, reference=bundle.manifest.get("reference"),  # the same reference set
    )
    log.info("published fine-tuned bundle %s (version %s, parent %s)", new_bundle.short_digest, version, bundle.short_digest)
    return new_bundle, {"rounds": rounds, "bundle": str(new_bundle.path), "digest": new_bundle.digest,
                        "version": version, "parent": bundle.digest, "published": True, "gate": gate}

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

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from coordinator.config import CoordinatorConfig
from shared_backbone.config import TrainConfig
from shared_backbone.data import reference_set
from shared_backbone.model.bundle import Bundle
from shared_backbone.protocol import flower_messages
from shared_backbone.protocol.flower_messages import (
    ALLOWED_FIT_HEAD_REPLY,
    FINETUNE,
    FINETUNE_RESULT,
    FINETUNE_WEIGHTS,
    FIT_HEAD,
    RESULT_RECORD,
    RUN_RECORD,
    TRAIN_RECORD,
)

log = logging.getLogger(__name__)


REGISTERED, FAILED, TIMED_OUT, REJECTED = "registered", "failed", "timed_out", "rejected"


class FederationError(RuntimeError):
    """A run that cannot proceed (no nodes, no bundle, no node agreed to fine-tune)."""


class GridLike(Protocol):
    """The part of Flower's Grid the coordinator uses (InMemoryGrid, the deployment grid)."""

    def get_node_ids(self) -> Any: ...

    def push_messages(self, messages: Any) -> Any: ...

    def pull_messages(self, message_ids: Any) -> Any: ...


class RegistryLike(Protocol):
    def register(self, **kwargs: Any) -> Any: ...


@dataclass
class NodeResult:
    """What happened to one Flower node in one round."""

    flower_node_id: int
    status: str
    node_id: str = ""
    source: str = ""
    endpoint: str = ""
    head_digest: str = ""
    backbone_digest: str = ""
    backbone_version: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    reply_bytes: int = 0
    reply_records: list[str] = field(default_factory=list)


@dataclass
class FederationResult:
    """The verdict of one run, written as JSON."""

    status: str = "running"
    backbone: dict[str, Any] = field(default_factory=dict)
    nodes: list[NodeResult] = field(default_factory=list)
    finetune: dict[str, Any] = field(default_factory=dict)
    flower: dict[str, Any] = field(default_factory=dict)  # engine, run id and status (filled by the launcher)
    error: str = ""
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    @property
    def registered(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status == REGISTERED]

    @property
    def problems(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.status != REGISTERED]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["summary"] = {
            status: sum(1 for n in self.nodes if n.status == status) for status in (REGISTERED, FAILED, TIMED_OUT, REJECTED)
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FederationResult":
        values = {k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}}
        values["nodes"] = [NodeResult(**n) for n in data.get("nodes", [])]
        return cls(**values)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_result(path: str | Path, result: FederationResult) -> Path:
    """Writes the result JSON atomically (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    staging.replace(path)
    return path


def read_result(path: str | Path) -> FederationResult:
    path = Path(path)
    try:
        return FederationResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FederationError(f"federation result {path} not found (did the ServerApp start?)") from None


def wait_for_nodes(grid: GridLike, min_nodes: int, timeout: float, poll: float = 0.5) -> list[int]:
    """The connected node ids once at least `min_nodes` are there; FederationError after `timeout`."""
    deadline = time.monotonic() + timeout
    nodes: list[int] = []
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= max(min_nodes, 1):
            log.info("%d node(s) connected", len(nodes))
            return nodes
        if time.monotonic() >= deadline:
            raise FederationError(f"only {len(nodes)} of the required {min_nodes} node(s) connected within {timeout:.0f} s")
        time.sleep(poll)


def train_record(train: TrainConfig) -> ConfigRecord:
    return ConfigRecord(dataclasses.asdict(train))


def fit_head_content(bundle: Bundle, train: TrainConfig, *, calibration: str = "", reference: dict[str, str] | None = None,
                     round_label: str = "heads") -> RecordDict:
    """The `train.fit_head` payload: bundle files + signed manifest, training config, reference pointer."""
    content = flower_messages.pack_bundle(bundle)
    content[TRAIN_RECORD] = train_record(train)
    run: dict[str, Any] = {"calibration": calibration, "round": round_label}
    if reference:
        run.update({"reference_path": reference["path"], "reference_digest": reference["digest"]})
    content[RUN_RECORD] = ConfigRecord(run)
    return content


def reference_pointer(config: CoordinatorConfig) -> dict[str, str] | None:
    """{path, digest} of the coordinator's reference set, or None when none is configured."""
    if not config.federation.reference:
        return None
    path = Path(config.federation.reference).resolve()
    return {"path": str(path), "digest": reference_set.folder_digest(path)}


def send_and_collect(grid: GridLike, contents: dict[int, RecordDict], message_type: str, *, timeout: float,
                     poll: float = 1.0) -> dict[int, Message | None]:
    """Sends one message per node and waits (bounded) for replies; None = no reply in time.

    Replies are matched to requests by `reply_to_message_id`, never by `src_node_id` (a reply the
    SuperLink makes for a node that went away carries the SuperLink's id).
    """
    messages = [
        Message(content=content, dst_node_id=node, message_type=message_type, ttl=timeout + 60.0)
        for node, content in contents.items()
    ]
    message_ids = list(grid.push_messages(messages))
    by_message: dict[str, int] = {}
    replies: dict[int, Message | None] = {node: None for node in contents}
    for node, message_id in zip(contents, message_ids):
        if message_id:
            by_message[str(message_id)] = node
        else:
            log.warning("message to node %d could not be pushed", node)
    pending = set(by_message)
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(sorted(pending)):
            request_id = reply.metadata.reply_to_message_id
            if request_id in pending:
                replies[by_message[request_id]] = reply
                pending.discard(request_id)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    if pending:
        log.warning("%d node(s) did not reply within %.0f s", len(pending), timeout)
    return replies


def _reply_size(message: Message) -> int:
    content = message.content
    size = 0
    for record in content.array_records.values():
        size += record.count_bytes()
    for record in (*content.config_records.values(), *content.metric_records.values()):
        size += len(json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in record.items()}))
    return size


def parse_fit_head_reply(node: int, reply: Message | None, bundle: Bundle, seconds: float) -> NodeResult:
    """A NodeResult from one reply (or its absence); never raises on a malformed reply."""
    if reply is None:
        return NodeResult(node, TIMED_OUT, error="no reply before the round's deadline", seconds=seconds)
    if reply.has_error():
        return NodeResult(node, FAILED, error=str(reply.error.reason or f"error code {reply.error.code}"), seconds=seconds)
    records = sorted([*reply.content.array_records, *reply.content.config_records, *reply.content.metric_records])
    result = NodeResult(node, REJECTED, seconds=seconds, reply_bytes=_reply_size(reply), reply_records=records)
    if reply.content.array_records or set(records) - ALLOWED_FIT_HEAD_REPLY:
        result.error = f"reply carries records {records}; a head reply may carry only metrics and identity"
        return result
    if RESULT_RECORD not in reply.content.config_records:
        result.error = f"reply has no {RESULT_RECORD!r} record"
        return result
    values = reply.content.config_records[RESULT_RECORD]
    try:
        result.node_id = str(values["node_id"])
        result.source = str(values["source"])
        result.endpoint = str(values.get("endpoint", ""))
        result.head_digest = str(values["head_digest"])
        result.backbone_digest = str(values["backbone_digest"])
        result.backbone_version = str(values.get("backbone_version", ""))
        result.calibration = json.loads(str(values["calibration"]))
        result.threshold = float(values["threshold"])
        result.metrics = json.loads(str(values.get("metrics", "{}")))
    except (KeyError, ValueError, TypeError) as exc:
        result.error = f"malformed {RESULT_RECORD} record ({exc})"
        return result
    if result.backbone_digest != bundle.digest:
        result.error = f"head trained on backbone {result.backbone_digest[:12]}, not on {bundle.short_digest}"
        return result
    result.status = "trained"
    return result


def register_results(registry: RegistryLike, results: list[NodeResult], secrets: dict[int, str]) -> None:
    """Registers every trained head; a refusal (source taken, identity mismatch) marks it rejected."""
    for result in results:
        if result.status != "trained":
            continue
        try:
            registry.register(
                node_id=result.node_id, source=result.source, endpoint=result.endpoint,
                backbone_digest=result.backbone_digest, head_digest=result.head_digest,
                calibration=result.calibration, threshold=result.threshold,
                secret=secrets.get(result.flower_node_id, ""), backbone_version=result.backbone_version,
                metrics=result.metrics,
            )
        except ValueError as exc:  # RegistryError and its subclasses
            result.status, result.error = REJECTED, f"registry refused: {exc}"
            continue
        result.status = REGISTERED
        log.info("registered node %s (source %s, head %s)", result.node_id, result.source, result.head_digest[:12])


def run_head_round(grid: GridLike, config: CoordinatorConfig, bundle: Bundle, nodes: list[int],
                   registry: RegistryLike) -> list[NodeResult]:
    """Sends `train.fit_head` to `nodes`, registers what comes back; one NodeResult per node."""
    fed = config.federation
    reference = reference_pointer(config)
    contents = {
        node: fit_head_content(bundle, fed.head_train, calibration=fed.calibration, reference=reference) for node in nodes
    }
    started = time.monotonic()
    log.info("sending bundle %s (version %s) to %d node(s)", bundle.short_digest, bundle.version, len(nodes))
    replies = send_and_collect(grid, contents, FIT_HEAD, timeout=fed.round_timeout, poll=fed.poll_interval)
    seconds = round(time.monotonic() - started, 1)
    results, secrets = [], {}
    for node, reply in replies.items():
        result = parse_fit_head_reply(node, reply, bundle, seconds)
        if reply is not None and not reply.has_error() and RESULT_RECORD in reply.content.config_records:
            secrets[node] = str(reply.content.config_records[RESULT_RECORD].get("secret", ""))
        results.append(result)
    register_results(registry, results, secrets)
    for result in results:
        if result.status != REGISTERED:
            log.warning("node %d (%s): %s: %s", result.flower_node_id, result.source or "?", result.status, result.error)
    return results


# ----------------------------------------------------------------------------- FedAvg fine-tuning


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


# ----------------------------------------------------------------------------- the whole run


def run_federation_round(grid: GridLike, config: CoordinatorConfig) -> FederationResult:
    """Everything one ServerApp run does; always writes `federation.result_file`, even on failure."""
    from coordinator.registry import Registry
    from shared_backbone.model import signing
    from shared_backbone.model.bundle import load_configured_bundle

    fed = config.federation
    result = FederationResult(started=_now())
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
        registry = Registry(config.registry)
        try:
            result.nodes = run_head_round(grid, config, bundle, nodes, registry)
        finally:
            registry.close()
        result.status = "completed"
    except Exception as exc:
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        result.finished = _now()
        result.seconds = round(time.monotonic() - started, 1)
        write_result(fed.result_file, result)
        log.info(
            "federation %s: %d registered, %d not (%s); result in %s", result.status, len(result.registered),
            len(result.problems), ", ".join(f"{n.source or n.flower_node_id}: {n.status}" for n in result.problems) or "-",
            fed.result_file,
        )
    return result

"""The `train.fit_head` round: send every node the signed bundle, register the heads that come back.

Each node gets the bundle with the run's training config and a verifiable pointer to the
reference set; replies are matched to requests by `reply_to_message_id` and every head that came
back is registered; nodes that failed, were refused or timed out are recorded, never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ConfigRecord, Message, RecordDict

from coordinator.config import CoordinatorConfig
from coordinator.flower.messaging import GridLike, reply_size, send_and_collect
from coordinator.flower.results import FAILED, REGISTERED, REJECTED, TIMED_OUT, NodeResult
from shared_backbone.config import TrainConfig
from shared_backbone.data import reference_set
from shared_backbone.model.bundle import Bundle
from shared_backbone.protocol import flower_messages
from shared_backbone.protocol.flower_messages import ALLOWED_FIT_HEAD_REPLY, FIT_HEAD, RESULT_RECORD, RUN_RECORD, TRAIN_RECORD

log = logging.getLogger(__name__)


class RegistryLike(Protocol):
    def register(self, **kwargs: Any) -> Any: ...


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
    if not config.reference:
        return None
    path = Path(config.reference).resolve()
    return {"path": str(path), "digest": reference_set.folder_digest(path)}


def parse_fit_head_reply(node: int, reply: Message | None, bundle: Bundle, seconds: float) -> NodeResult:
    """A NodeResult from one reply (or its absence); never raises on a malformed reply."""
    if reply is None:
        return NodeResult(node, TIMED_OUT, error="no reply before the round's deadline", seconds=seconds)
    if reply.has_error():
        return NodeResult(node, FAILED, error=str(reply.error.reason or f"error code {reply.error.code}"), seconds=seconds)
    records = sorted([*reply.content.array_records, *reply.content.config_records, *reply.content.metric_records])
    result = NodeResult(node, REJECTED, seconds=seconds, reply_bytes=reply_size(reply), reply_records=records)
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

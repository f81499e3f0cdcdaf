"""The `train.fit_head` round: send every node the signed bundle, register the heads that come back.

Each node gets the bundle with the run's training config, a verifiable pointer to the reference
set and a fresh challenge; replies are matched to requests by `reply_to_message_id` and every
head that came back is registered through the same admission (signature over the challenge,
enrolment proof for a new node id) and validator as the gRPC `RegistryService`; nodes that
failed, were refused or timed out are recorded, never fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from coordinator.admission import CHALLENGE_TTL, Admission, Proof
from coordinator.config import CoordinatorConfig
from coordinator.flower.messaging import GridLike, reply_size, send_and_collect
from coordinator.flower.results import FAILED, REGISTERED, REJECTED, TIMED_OUT, NodeResult
from coordinator.registry import Registry
from shared_backbone.config import TrainConfig
from shared_backbone.data import reference_set
from shared_backbone.model.bundle import Bundle
from shared_backbone.protocol import flower_messages, identity
from shared_backbone.protocol.registration import InvalidRegistration, Registration
from shared_backbone.protocol.flower_messages import ALLOWED_FIT_HEAD_REPLY, FIT_HEAD, RESULT_RECORD, RUN_RECORD, TRAIN_RECORD

log = logging.getLogger(__name__)


def train_record(train: TrainConfig) -> ConfigRecord:
    return ConfigRecord(dataclasses.asdict(train))


def fit_head_content(bundle: Bundle, train: TrainConfig, *, calibration: str = "", reference: dict[str, str] | None = None,
                     round_label: str = "heads", challenge: str = "") -> RecordDict:
    """The `train.fit_head` payload: bundle files + signed manifest, training config, reference pointer, challenge."""
    content = flower_messages.pack_bundle(bundle)
    content[TRAIN_RECORD] = train_record(train)
    run: dict[str, Any] = {"calibration": calibration, "round": round_label, flower_messages.CHALLENGE_FIELD: challenge}
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
        return NodeResult(node, FAILED, error=str(reply.error.reason or f"error code {reply.error.code}")[:500], seconds=seconds)
    records = sorted([*reply.content.array_records, *reply.content.config_records, *reply.content.metric_records])
    result = NodeResult(node, REJECTED, seconds=seconds, reply_bytes=reply_size(reply), reply_records=records[:10])
    if reply.content.array_records or set(records) - ALLOWED_FIT_HEAD_REPLY:
        result.error = f"reply carries records {records[:10]}; a head reply may carry only metrics and identity"
        return result
    if RESULT_RECORD not in reply.content.config_records:
        result.error = f"reply has no {RESULT_RECORD!r} record"
        return result
    try:
        result.registration = Registration.from_json_values(reply.content.config_records[RESULT_RECORD])
    except InvalidRegistration as exc:
        result.error = f"malformed {RESULT_RECORD} record ({str(exc)[:200]})"
        return result
    if result.registration.backbone_digest != bundle.digest:
        result.error = f"head trained on backbone {result.registration.backbone_digest[:12]}, not on {bundle.short_digest}"
        return result
    result.status = "trained"
    return result


def reply_proof(reply: Message, challenge: str) -> Proof:
    """The identity proof a fit_head reply carries (the signed digest is over its other values)."""
    values = dict(reply.content.config_records[RESULT_RECORD])
    return Proof(
        public_key=str(values.get(flower_messages.PUBLIC_KEY_FIELD, "")),
        signature=str(values.get(flower_messages.SIGNATURE_FIELD, "")),
        challenge=challenge, payload_digest=identity.record_digest(values, flower_messages.PROOF_FIELDS),
        enrolment_proof=str(values.get(flower_messages.ENROLMENT_PROOF_FIELD, "")),
    )


def register_results(admission: Admission, results: list[NodeResult], proofs: dict[int, Proof]) -> None:
    """Admits every trained head; a refusal (no enrolment, bad proof, invalid field, source taken) marks it rejected."""
    for result in results:
        if result.status != "trained" or result.registration is None:
            continue
        try:
            admission.register(result.registration, proofs[result.flower_node_id], identity.FLOWER_REGISTER,
                               challenge_for=flower_identity(result.flower_node_id))
        except (ValueError, KeyError) as exc:  # RegistryError, InvalidRegistration and their subclasses
            result.status, result.error = REJECTED, f"registry refused: {exc}"
            continue
        result.status = REGISTERED
        log.info("registered node %s (source %s, head %s)", result.registration.node_id, result.source,
                 result.registration.head_digest[:12])


def flower_identity(node: int) -> str:
    """Whom a head-round challenge is issued to: the Flower node it was sent to."""
    return f"flower-node-{node}"


def run_head_round(grid: GridLike, config: CoordinatorConfig, bundle: Bundle, nodes: list[int],
                   registry: Registry) -> list[NodeResult]:
    """Sends `train.fit_head` to `nodes`, registers what comes back; one NodeResult per node."""
    fed = config.federation
    reference = reference_pointer(config)
    admission = Admission(registry)
    # The reply comes after the node has trained: the challenge lives as long as the round may.
    challenges = {node: admission.challenges.issue(flower_identity(node), ttl=fed.round_timeout + CHALLENGE_TTL)
                  for node in nodes}
    contents = {
        node: fit_head_content(bundle, fed.head_train, calibration=fed.calibration, reference=reference,
                               challenge=challenges[node])
        for node in nodes
    }
    started = time.monotonic()
    log.info("sending bundle %s (version %s) to %d node(s)", bundle.short_digest, bundle.version, len(nodes))
    replies = send_and_collect(grid, contents, FIT_HEAD, timeout=fed.round_timeout, poll=fed.poll_interval)
    seconds = round(time.monotonic() - started, 1)
    results, proofs = [], {}
    for node, reply in replies.items():
        result = parse_fit_head_reply(node, reply, bundle, seconds)
        if result.status == "trained":
            proofs[node] = reply_proof(reply, challenges[node])
        results.append(result)
    register_results(admission, results, proofs)
    for result in results:
        if result.status != REGISTERED:
            log.warning("node %d (%s): %s: %s", result.flower_node_id, result.source or "?", result.status, result.error)
    return results

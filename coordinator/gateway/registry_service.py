"""`RegistryService`: nodes ask for a challenge, then register their head, heartbeat and leave, signed.

The proofs travel in metadata (`shared_backbone.runtime.rpc` names the keys); `coordinator.admission`
checks them and `Registry.register` validates every field, for this path and the Flower one alike.
"""

from __future__ import annotations

import logging

import grpc

from coordinator.admission import CHALLENGE_TTL, Admission, NotAuthenticated, Proof, StaleChallenge
from coordinator.config import GatewayConfig
from coordinator.registry import (
    INCOMPATIBLE,
    IdentityMismatch,
    NotEnrolled,
    Registry,
    RegistryError,
    SourceTaken,
    StaleGeneration,
    UnknownNode,
    serving_status,
)
from coordinator.validation import InvalidRegistration, check_node_id
from shared_backbone.protocol import identity
from shared_backbone.protocol.registration import Registration
from shared_backbone.runtime import rpc
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Most specific first: every refusal gets its own status code and the registry's one-line reason.
STATUS_OF = (
    (StaleChallenge, grpc.StatusCode.ABORTED),
    (NotAuthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (NotEnrolled, grpc.StatusCode.UNAUTHENTICATED),
    (IdentityMismatch, grpc.StatusCode.PERMISSION_DENIED),
    (SourceTaken, grpc.StatusCode.ALREADY_EXISTS),
    (UnknownNode, grpc.StatusCode.NOT_FOUND),
    (StaleGeneration, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRegistration, grpc.StatusCode.INVALID_ARGUMENT),
    (RegistryError, grpc.StatusCode.INVALID_ARGUMENT),
)


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code = next(code for kind, code in STATUS_OF if isinstance(exc, kind))
    context.abort(code, str(exc))


def _proof(context: grpc.ServicerContext, message) -> Proof:
    keys = (rpc.PUBLIC_KEY_METADATA, rpc.CHALLENGE_METADATA, rpc.SIGNATURE_METADATA)
    values = {key: rpc.metadata_value(context, key) for key in keys}
    missing = [key for key, value in values.items() if not value]
    if missing:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing {', '.join(missing)} metadata (the node's signed challenge)")
    return Proof(
        public_key=values[rpc.PUBLIC_KEY_METADATA], signature=values[rpc.SIGNATURE_METADATA],
        challenge=values[rpc.CHALLENGE_METADATA], payload_digest=identity.message_digest(message),
        enrolment_proof=rpc.metadata_value(context, rpc.ENROLMENT_PROOF_METADATA),
    )


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """RegistryService over one Admission (challenges, proofs) and the registry; `backbone` is the gateway's."""

    def __init__(self, registry: Registry, backbone: pb.Backbone, config: GatewayConfig, admission: Admission) -> None:
        self.registry = registry
        self.backbone = backbone
        self.config = config
        self.admission = admission

    def Challenge(self, request: pb.ChallengeRequest, context: grpc.ServicerContext) -> pb.ChallengeResponse:
        try:
            check_node_id(request.node_id)
        except InvalidRegistration as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.ChallengeResponse(challenge=self.admission.challenges.issue(request.node_id), expires_in_seconds=CHALLENGE_TTL)

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterResponse:
        proof = _proof(context, request)
        try:
            entry = self.admission.register(Registration.from_proto(request), proof)
        except (RegistryError, InvalidRegistration) as exc:
            _abort(context, exc)
        status = serving_status(entry, self.backbone.digest)
        log.info(
            "registered node %s (source %s at %s, head %s, backbone %s%s)",
            entry.node_id, entry.source, entry.endpoint, entry.head_digest[:12], entry.backbone_digest[:12],
            "" if status != INCOMPATIBLE else ": INCOMPATIBLE, not queried",
        )
        return pb.RegisterResponse(
            status=status,
            backbone=self.backbone,
            heartbeat_interval_seconds=self.config.heartbeat_interval,
            stale_after_seconds=self.config.stale_after,
            gateway_credential=self.registry.gateway_credential(entry.node_id),
            generation=entry.generation,
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        proof = _proof(context, request)
        try:
            entry = self.admission.heartbeat(request.node_id, proof)
        except RegistryError as exc:
            _abort(context, exc)
        return pb.HeartbeatResponse(status=serving_status(entry, self.backbone.digest))

    def Deregister(self, request: pb.DeregisterRequest, context: grpc.ServicerContext) -> pb.DeregisterResponse:
        proof = _proof(context, request)
        try:
            entry = self.admission.deregister(request.node_id, request.generation, proof)
        except RegistryError as exc:
            _abort(context, exc)
        log.info("node %s (source %s) left the network (registration %d)", entry.node_id, entry.source, entry.generation)
        return pb.DeregisterResponse(status=entry.status)

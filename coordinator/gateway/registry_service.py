"""`RegistryService`: nodes ask for a challenge, then register their head and heartbeat, signed.

The proofs travel in metadata (`shared_backbone.runtime.rpc` names the keys); `coordinator.admission`
checks them and `Registry.register` validates every field, for this path and the Flower one alike.
"""

from __future__ import annotations

import logging

import grpc

from coordinator.admission import CHALLENGE_TTL, Admission, NotAuthenticated, Proof, StaleChallenge
from coordinator.config import GatewayConfig
from coordinator.gateway.attribution_service import INCOMPATIBLE, Gateway
from coordinator.registry import IdentityMismatch, NotEnrolled, Registry, RegistryError, SourceTaken, UnknownNode
from coordinator.validation import InvalidRegistration, check_node_id
from shared_backbone.protocol import identity, wire
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
    (InvalidRegistration, grpc.StatusCode.INVALID_ARGUMENT),
    (RegistryError, grpc.StatusCode.INVALID_ARGUMENT),
)


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code = next(code for kind, code in STATUS_OF if isinstance(exc, kind))
    context.abort(code, str(exc))


def _proof(context: grpc.ServicerContext, message) -> Proof:
    values = {key: rpc.metadata_value(context, key) for key in (rpc.NODE_PUBLIC_KEY, rpc.NODE_CHALLENGE, rpc.NODE_SIGNATURE)}
    missing = [key for key, value in values.items() if not value]
    if missing:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing {', '.join(missing)} metadata (the node's signed challenge)")
    return Proof(
        public_key=values[rpc.NODE_PUBLIC_KEY], signature=values[rpc.NODE_SIGNATURE], challenge=values[rpc.NODE_CHALLENGE],
        payload_digest=identity.message_digest(message), enrolment_proof=rpc.metadata_value(context, rpc.ENROLMENT_PROOF),
    )


def request_fields(request: pb.RegisterRequest) -> dict:
    """The registration as the validator reads it (the same keys the Flower path gives)."""
    return {
        "node_id": request.node_id, "source": request.source, "endpoint": request.endpoint,
        "backbone_digest": request.backbone_digest, "backbone_version": request.backbone_version,
        "head_digest": request.head_digest, "threshold": request.threshold,
        "calibration": wire.calibration_fields(request.calibration),
        "metrics": wire.metrics_from_struct(request.metrics),
    }


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """RegistryService over one Admission (challenges, proofs) and the registry."""

    def __init__(self, registry: Registry, gateway: Gateway, config: GatewayConfig, admission: Admission) -> None:
        self.registry = registry
        self.gateway = gateway
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
            entry = self.admission.register(request_fields(request), proof)
        except (RegistryError, InvalidRegistration) as exc:
            _abort(context, exc)
        status = self.gateway.status_of(entry)
        log.info(
            "registered node %s (source %s at %s, head %s, backbone %s%s)",
            entry.node_id, entry.source, entry.endpoint, entry.head_digest[:12], entry.backbone_digest[:12],
            "" if status != INCOMPATIBLE else ": INCOMPATIBLE, not queried",
        )
        return pb.RegisterResponse(
            status=status,
            backbone=self.gateway.backbone,
            heartbeat_interval_seconds=self.config.heartbeat_interval,
            stale_after_seconds=self.config.stale_after,
            gateway_credential=self.registry.gateway_credential(entry.node_id),
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        proof = _proof(context, request)
        try:
            entry = self.admission.heartbeat(request.node_id, proof)
        except RegistryError as exc:
            _abort(context, exc)
        return pb.HeartbeatResponse(status=self.gateway.status_of(entry))

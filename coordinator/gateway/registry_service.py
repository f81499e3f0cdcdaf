"""`RegistryService`: nodes register their head and heartbeat; the token is checked by the server's
interceptor, the node's own secret here."""

from __future__ import annotations

import logging

import grpc

from coordinator.config import GatewayConfig
from coordinator.gateway.attribution_service import INCOMPATIBLE, Gateway
from coordinator.registry import IdentityMismatch, Registry, RegistryError, SourceTaken, UnknownNode
from shared_backbone.protocol import rpc, wire
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """RegistryService: the token is checked by the server's interceptor, the node secret here."""

    def __init__(self, registry: Registry, gateway: Gateway, config: GatewayConfig) -> None:
        self.registry = registry
        self.gateway = gateway
        self.config = config

    def _secret(self, context: grpc.ServicerContext) -> str:
        secret = rpc.metadata_value(context, rpc.NODE_SECRET)
        if not secret:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing {rpc.NODE_SECRET} metadata (the node's secret)")
        return secret

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.RegisterResponse:
        secret = self._secret(context)
        problem = _invalid_registration(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            entry = self.registry.register(
                node_id=request.node_id,
                source=request.source,
                endpoint=request.endpoint,
                backbone_digest=request.backbone_digest,
                backbone_version=request.backbone_version,
                head_digest=request.head_digest,
                calibration=wire.calibration_from_proto(request.calibration).to_dict(),
                threshold=request.threshold,
                metrics=wire.metrics_from_struct(request.metrics),
                secret=secret,
            )
        except IdentityMismatch as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except SourceTaken as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except RegistryError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        secret = self._secret(context)
        try:
            entry = self.registry.heartbeat(request.node_id, secret)
        except UnknownNode as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except IdentityMismatch as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.HeartbeatResponse(status=self.gateway.status_of(entry))


def _invalid_registration(request: pb.RegisterRequest) -> str | None:
    for name in ("node_id", "source", "endpoint", "backbone_digest", "head_digest"):
        if not getattr(request, name):
            return f"{name} must not be empty"
    host, _, port = request.endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"endpoint {request.endpoint!r} is not host:port"
    if not 0.0 <= request.threshold <= 1.0:
        return f"threshold {request.threshold} is outside [0, 1]"
    try:
        wire.calibration_from_proto(request.calibration)
    except (ValueError, KeyError) as exc:
        return f"calibration: {exc}"
    return None

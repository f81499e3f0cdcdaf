"""A Python client for the query gateway (`attribution.v1.AttributionService`).

    with AttributionClient("127.0.0.1:50051") as client:
        for result in client.attribute([open("a.png", "rb").read()]):
            print(result.attribution, result.scores)

`attribnet query` is a thin CLI over this class. Errors from the gateway are raised as
`GatewayError` with the gRPC status code and the server's one-line reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format

from shared_backbone.config import TLSConfig
from shared_backbone.runtime import rpc
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 30.0


class GatewayError(RuntimeError):
    """A failed call: `code` is the grpc.StatusCode, `details` the server's reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass
class Attribution:
    """One image's answer from the gateway."""

    index: int
    fake_score: float
    scores: dict[str, float]
    raw_scores: dict[str, float]
    thresholds: dict[str, float]
    attribution: str
    fake_threshold: float
    backbone_version: str
    backbone_digest: str
    missing_nodes: list[str] = field(default_factory=list)
    missing_reasons: dict[str, str] = field(default_factory=dict)
    heatmap_png: bytes = b""
    p_values: dict[str, float] = field(default_factory=dict)
    prediction_set: list[str] = field(default_factory=list)
    alpha: float = 0.0
    typicality: dict[str, float] = field(default_factory=dict)
    typicality_p_values: dict[str, float] = field(default_factory=dict)
    typicality_alpha: float = 0.0
    out_of_scope: str = ""  # why the image was not judged ("" when it was)
    reason: str = ""  # the rule's exit that gave `attribution` (shared_backbone/model/rule.py REASONS)

    @classmethod
    def from_proto(cls, message: pb.ImageResult) -> "Attribution":
        return cls(
            index=message.index,
            fake_score=message.fake_score,
            scores=dict(sorted(message.scores.items())),
            raw_scores=dict(sorted(message.raw_scores.items())),
            thresholds=dict(sorted(message.thresholds.items())),
            attribution=message.attribution,
            fake_threshold=message.fake_threshold,
            backbone_version=message.backbone.version,
            backbone_digest=message.backbone.digest,
            missing_nodes=list(message.missing_nodes),
            missing_reasons=dict(sorted(message.missing_reasons.items())),
            heatmap_png=message.heatmap_png,
            p_values=dict(sorted(message.p_values.items())),
            prediction_set=list(message.prediction_set),
            alpha=message.alpha,
            typicality=dict(sorted(message.typicality.items())),
            typicality_p_values=dict(sorted(message.typicality_p_values.items())),
            typicality_alpha=message.typicality_alpha,
            out_of_scope=message.out_of_scope,
            reason=message.decision_reason,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the heatmap bytes are left out)."""
        data = asdict(self)
        data.pop("heatmap_png")
        data["backbone"] = {"version": data.pop("backbone_version"), "digest": data.pop("backbone_digest")}
        return data


class AttributionClient:
    """Calls a gateway; `token` is the gateway's query token, `tls` its CA (and a client cert for mTLS)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: TLSConfig | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_mb: int = 32,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.metadata = rpc.bearer(token or "")
        self.channel = rpc.open_channel(target, tls, max_message_mb)
        self.stub = pb_grpc.AttributionServiceStub(self.channel)

    def __enter__(self) -> "AttributionClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise GatewayError(exc.code(), exc.details() or "") from None

    def attribute(self, images: list[bytes], heatmap: bool = False) -> list[Attribution]:
        """One result per encoded image, in order. Raises GatewayError (e.g. INVALID_ARGUMENT)."""
        response = self._call(self.stub.Attribute, pb.AttributeRequest(images=list(images), heatmap=heatmap))
        return [Attribution.from_proto(result) for result in response.results]

    def list_sources(self) -> list[dict[str, Any]]:
        """The registry as the gateway sees it: one dict per node (node_id, source, status, ...)."""
        response = self._call(self.stub.ListSources, pb.ListSourcesRequest())
        return [
            json_format.MessageToDict(source, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for source in response.sources
        ]

    def health(self, service: str = "") -> str:
        """The server's health status name ('SERVING', 'NOT_SERVING', ...)."""
        try:
            return rpc.check_health(self.channel, service, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise GatewayError(exc.code(), exc.details() or "") from None

"""`HeadService`: scores batches of trunk features with this node's head."""

from __future__ import annotations

import threading

import grpc
import numpy as np

from shared_backbone.model import bundle as bundle_lib
from shared_backbone.model import heads
from shared_backbone.protocol import wire
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

HEAD_SERVICE = pb.DESCRIPTOR.services_by_name["HeadService"].full_name


class HeadServicer(pb_grpc.HeadServiceServicer):
    """Scores batches of wire features with one head; validates shape and dtype first."""

    def __init__(self, head: heads.Head, bundle: bundle_lib.Bundle, node_id: str, max_batch: int) -> None:
        self.head = head
        self.bundle = bundle
        self.node_id = node_id
        self.max_batch = max_batch
        self.feature_shape = tuple(int(s) for s in bundle.manifest["feature_shape"])
        self._lock = threading.Lock()

    def swap_head(self, head: heads.Head) -> None:
        """Serves `head` from the next call on (a reloaded head of the same source)."""
        with self._lock:
            self.head = head

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        if request.backbone_digest and request.backbone_digest != self.bundle.digest:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"features from backbone {request.backbone_digest[:12]}, this head was trained on {self.bundle.short_digest}",
            )
        try:
            features = wire.features_from_request(request, self.feature_shape, self.max_batch)
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._lock:
            raw = self.head.raw_scores(features.astype(np.float32))
        return pb.ScoreResponse(raw_scores=raw.tolist(), source=self.head.source, head_digest=self.head.digest)

    def Describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext) -> pb.DescribeResponse:
        return pb.DescribeResponse(
            node_id=self.node_id,
            source=self.head.source,
            backbone=pb.Backbone(version=self.bundle.version, digest=self.bundle.digest),
            head_digest=self.head.digest,
            feature_shape=list(self.feature_shape),
            calibration=wire.calibration_to_proto(self.head.calibration),
            threshold=self.head.threshold,
        )

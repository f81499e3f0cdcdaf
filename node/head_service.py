"""`HeadService`: scores batches of trunk features with this node's head.

Concurrent Score calls (the gateway pipelines its batches) are merged by a `MicroBatcher` into
one run of the head, traced once as a `CompiledModel`; each call gets its rows back. Waits are
bounded by the call's deadline (capped by `request_timeout`), a full queue is RESOURCE_EXHAUSTED.
With the raw scores goes each image's typicality for the node's own images (`model.typicality`,
a few numpy operations per batch), or nothing when the head has no typicality model.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import grpc
import numpy as np

from shared_backbone.model import bundle as bundle_lib
from shared_backbone.model import heads
from shared_backbone.model.compiled import CompiledModel
from shared_backbone.protocol import wire
from shared_backbone.runtime.prometheus import STAGE_HEAD, ServerMetrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from shared_backbone.runtime.batching import (
    BatchItem,
    MicroBatcher,
    answer_or_abort,
    concatenate,
    deadline_of,
    split,
    submit_or_abort,
)


class _Serving(NamedTuple):
    """The head being served and its compiled model, swapped together."""

    head: heads.Head
    compiled: CompiledModel


HEAD_SERVICE = pb.DESCRIPTOR.services_by_name["HeadService"].full_name


class HeadServicer(pb_grpc.HeadServiceServicer):
    """Scores batches of wire features with one head; validates shape and dtype first."""

    def __init__(
        self, head: heads.Head, bundle: bundle_lib.Bundle, node_id: str, max_batch: int, *,
        window: float = 0.0, max_queue: int = 4096, request_timeout: float = 30.0, metrics: ServerMetrics | None = None,
    ) -> None:
        self.bundle = bundle
        self.node_id = node_id
        self.max_batch = max_batch
        self.request_timeout = request_timeout
        self.metrics = metrics or ServerMetrics()
        self._head_seconds = self.metrics.stage(STAGE_HEAD)
        self.feature_shape = tuple(int(s) for s in bundle.manifest["feature_shape"])
        self._serving = _Serving(head, CompiledModel(head.model, name=f"head_{head.source}"))
        self.metrics.watch_traces("head", lambda: self._serving.compiled.traces)
        self.batcher = MicroBatcher(
            self._run, name=f"head-batcher-{node_id}", window=window, max_batch=max_batch, max_queue=max_queue,
            on_batch=self.metrics.batch_observer(STAGE_HEAD), on_depth=self.metrics.depth_setter(STAGE_HEAD),
        )

    def close(self) -> None:
        self.batcher.close()

    @property
    def head(self) -> heads.Head:
        return self._serving.head

    @property
    def compiled(self) -> CompiledModel:
        return self._serving.compiled

    def _run(self, items: list[BatchItem]) -> None:
        serving = self._serving
        start = time.monotonic()
        features = concatenate(items)
        raw = np.asarray(serving.compiled(features.astype(np.float32))).reshape(-1).astype(np.float64)
        typicality = serving.head.typicality_scores(features)
        self._head_seconds(time.monotonic() - start)
        parts = split(items, raw) if typicality is None else split(items, raw, typicality)
        for item, (scores, *typical) in zip(items, parts):
            item.future.set_result((scores, typical[0] if typical else None, serving.head))

    def swap_head(self, head: heads.Head) -> None:
        """Serves `head` from the next batch on (a reloaded head of the same source).

        Head and compiled model change in one assignment, and each batch answers with the head
        that scored it, so a response never pairs one head's scores with another's digest.
        """
        self._serving = _Serving(head, CompiledModel(head.model, name=f"head_{head.source}"))

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        deadline = deadline_of(context.time_remaining(), self.request_timeout)
        if request.backbone_digest and request.backbone_digest != self.bundle.digest:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"features from backbone {request.backbone_digest[:12]}, this head was trained on {self.bundle.short_digest}",
            )
        try:
            features = wire.features_from_request(request, self.feature_shape, self.max_batch)
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        future = submit_or_abort(self.batcher, features, deadline, context, self.metrics, f"node {self.node_id}")
        raw, typicality, head = answer_or_abort(future, deadline, context, self.metrics)
        self.metrics.images.inc(len(raw))
        return pb.ScoreResponse(raw_scores=raw.tolist(), source=head.source, head_digest=head.digest,
                                typicality=[] if typicality is None else typicality.tolist())

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

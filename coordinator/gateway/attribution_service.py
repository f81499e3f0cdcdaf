"""`AttributionService`: the query gateway clients call.

A query costs one decode, one trunk pass and N tiny heads, not N backbones: the gateway admits
and decodes each image once (`intake.py`: limits, rate, allow-listed decoders, pixel budget), and
the serving pipeline (`serving_pipeline.py`) merges concurrent requests into one micro-batch, runs the
compiled serving model once and sends the batch's fp16 features to every healthy node once, in
parallel under per-node deadlines. Back here, `rule.attribute_batch` calibrates each raw score
with the calibration the node registered, computes the conformal and typicality p-values and
decides, the same rule as offline prediction (`image_results`, the one place of that decision). A node that is slow, down, cooling down or
broken only shows up in `missing_nodes`; it never fails the query. A full queue is
RESOURCE_EXHAUSTED and a request past its deadline DEADLINE_EXCEEDED, both at once. An image too
small to judge never enters the batch: it is answered `unknown` with its `out_of_scope` reason.

The servicer is thin: the server bootstrap (`server.py`) builds its collaborators (intake,
pipeline, heatmap model, rule, win-rate monitor) and hands them to its constructor.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf import timestamp_pb2
from PIL import Image

from coordinator.gateway.win_rate import WinRateMonitor
from coordinator.gateway.intake import Intake
from coordinator.gateway.serving_pipeline import BatchAnswer, ServingPipeline
from coordinator.registry import NodeEntry, Registry, public_status
from shared_backbone.model import heatmaps
from shared_backbone.model.rule import ImageAttribution, RuleSettings, attribute_batch, out_of_scope
from shared_backbone.runtime.prometheus import STAGE_DECODE, STAGE_RESPOND, ServerMetrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from shared_backbone.runtime.batching import answer_or_abort, deadline_of, submit_or_abort

def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


@dataclass(kw_only=True, eq=False)
class AttributionServicer(pb_grpc.AttributionServiceServicer):
    """AttributionService: one trunk and one Score call per node per batch, the offline decision rule."""

    backbone: pb.Backbone
    registry: Registry
    intake: Intake
    pipeline: ServingPipeline
    heatmapper: heatmaps.HeatmapModel
    input_mode: str
    rule: RuleSettings
    request_timeout: float
    metrics: ServerMetrics
    monitor: WinRateMonitor | None = None

    def __post_init__(self) -> None:
        self._decode_seconds = self.metrics.stage(STAGE_DECODE)
        self._respond_seconds = self.metrics.stage(STAGE_RESPOND)

    def heatmaps(self, inputs: np.ndarray, rgbs: list[np.ndarray]) -> list[bytes]:
        """PNG overlays of the detector's CAM (Grad-CAM for DCT backbones), one per image."""
        maps, _ = self.heatmapper.compute(inputs)
        pngs = []
        for rgb, heat in zip(rgbs, maps):
            buffer = io.BytesIO()
            Image.fromarray(heatmaps.render(rgb, heat, self.input_mode)).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs

    def Attribute(self, request: pb.AttributeRequest, context: grpc.ServicerContext) -> pb.AttributeResponse:
        start = time.monotonic()
        deadline = deadline_of(context.time_remaining(), self.request_timeout)
        self.intake.admit(request, context)
        inputs, rgbs, too_small = self.intake.decode(list(request.images), context)
        self._decode_seconds(time.monotonic() - start)
        results = {i: self.image_result(i, out_of_scope(reason), {}, {}, b"") for i, reason in too_small.items()}
        if inputs is not None:
            future = submit_or_abort(self.pipeline.batcher, inputs, deadline, context, self.metrics, "the gateway")
            pngs = self.heatmaps(inputs, rgbs) if request.heatmap else None  # while the batch runs
            answer = answer_or_abort(future, deadline, context, self.metrics)
            judged = [i for i in range(len(request.images)) if i not in too_small]
            results.update(zip(judged, self.image_results(answer, pngs, judged)))
        answered = time.monotonic()
        response = pb.AttributeResponse(results=[results[i] for i in range(len(request.images))])
        self._respond_seconds(time.monotonic() - answered)
        self.metrics.images.inc(len(request.images))
        for result in response.results:
            self.metrics.answers.labels(reason=result.decision_reason).inc()
        return response

    def image_results(self, answer: BatchAnswer, pngs: list[bytes] | None,
                      indices: list[int] | None = None) -> list[pb.ImageResult]:
        """The decision for a request's judged images (`indices`: their places in the request): raw and
        typicality scores -> `rule.attribute_batch` (calibration, p-values, the rule) -> one ImageResult each."""
        nodes = answer.nodes
        raw = {node.source: answer.raw[node.node_id] for node in nodes}
        typicality = {node.source: answer.typicality[node.node_id] for node in nodes if node.node_id in answer.typicality}
        calibrations = {node.source: node.calibration for node in nodes}
        thresholds = {node.source: node.threshold for node in nodes}
        answers = attribute_batch(answer.fake_scores, raw, calibrations, thresholds, self.rule, typicality)
        if self.monitor is not None:
            self.monitor.observe([result.attribution for result in answers], nodes)
        indices = indices if indices is not None else list(range(len(answers)))
        return [self.image_result(index, result, thresholds, answer.missing, pngs[i] if pngs else b"")
                for i, (index, result) in enumerate(zip(indices, answers))]

    def image_result(self, index: int, answer: ImageAttribution, thresholds: dict[str, float], missing: dict[str, str],
                     heatmap_png: bytes) -> pb.ImageResult:
        """One image's answer on the wire (the decision itself is `rule.attribute_batch`'s)."""
        return pb.ImageResult(
            index=index,
            fake_score=answer.fake_score,
            scores=answer.calibrated,
            raw_scores=answer.raw,
            thresholds=thresholds,
            attribution=answer.attribution,
            fake_threshold=self.rule.fake_threshold,
            backbone=self.backbone,
            missing_nodes=sorted(missing),
            missing_reasons=missing,
            heatmap_png=heatmap_png,
            p_values=answer.p_values,
            prediction_set=answer.prediction_set,
            alpha=self.rule.alpha,
            typicality=answer.typicality,
            typicality_p_values=answer.typicality_p_values,
            typicality_alpha=self.rule.typicality_alpha,
            out_of_scope=answer.out_of_scope,
            decision_reason=answer.reason,
        )

    def ListSources(self, request: pb.ListSourcesRequest, context: grpc.ServicerContext) -> pb.ListSourcesResponse:
        return pb.ListSourcesResponse(
            sources=[self.source_info(entry) for entry in self.registry.list()], backbone=self.backbone
        )

    def source_info(self, entry: NodeEntry) -> pb.SourceInfo:
        """What query clients may see of a node: never its endpoint, calibration, threshold or metrics (the admin's registry shows them)."""
        status, reason = public_status(entry, self.backbone.digest)
        return pb.SourceInfo(
            node_id=entry.node_id,
            source=entry.source,
            status=status,
            status_reason=reason,
            last_heartbeat=_timestamp(entry.last_heartbeat),
            registered_at=_timestamp(entry.registered_at),
            backbone_digest=entry.backbone_digest,
            head_digest=entry.head_digest,
        )

"""`AttributionService`: the query gateway clients call.

A query costs one trunk pass plus N tiny heads in parallel, not N backbones: the gateway decodes
and preprocesses each image once (`preprocessing.load_image` + `to_model_input`, the steps of the
shared `preprocessing.preprocess`, keeping the RGB image for heatmaps), runs the serving model
once per micro-batch (concurrent requests are merged for up to `batch_window_ms`), sends the fp16
trunk features to every healthy node on the gateway's backbone in parallel under one deadline,
calibrates each raw score with the calibration the node registered, and decides with
`rule.decide`, the same rule as offline prediction. A node that is slow, down or broken
only shows up in `missing_nodes`; it never fails the query.
"""

from __future__ import annotations

import io

import grpc
import numpy as np
from google.protobuf import timestamp_pb2
from PIL import Image

from coordinator.config import GatewayConfig
from coordinator.gateway.audit import WinRateMonitor
from coordinator.gateway.batcher import TrunkBatcher
from coordinator.gateway.node_pool import NodePool
from coordinator.registry import HEALTHY, NodeEntry, Registry
from shared_backbone.model import bundle as bundle_lib
from shared_backbone.model import heatmaps, networks, preprocessing
from shared_backbone.model.calibration import Calibration
from shared_backbone.model.rule import ImageAttribution, RuleSettings, attribute_batch
from shared_backbone.protocol import wire
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

INCOMPATIBLE = "incompatible"
DEADLINE_MARGIN = 0.05


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class Gateway(pb_grpc.AttributionServiceServicer):
    """AttributionService: one trunk per batch, heads over the network, the offline decision rule."""

    def __init__(self, bundle: bundle_lib.Bundle, registry: Registry, config: GatewayConfig) -> None:
        self.bundle = bundle
        self.spec = bundle.input_spec
        self.registry = registry
        self.config = config
        self.backbone = pb.Backbone(version=bundle.version, digest=bundle.digest)
        self.primary = bundle.load_primary()
        self.serving = networks.build_serving_model(self.primary)
        self.batcher = TrunkBatcher(self.serving, window=config.batch_window_ms / 1000.0, max_batch=config.max_batch)
        self.pool = NodePool(config.tls, config.max_message_mb)
        self.rule = RuleSettings(config.fake_threshold, config.alpha, config.tie_margin)
        self.monitor: WinRateMonitor | None = None  # set by the server bootstrap

    def close(self) -> None:
        self.batcher.close()
        self.pool.close()

    def preprocess(self, images: list[bytes], context: grpc.ServicerContext) -> tuple[np.ndarray, list[np.ndarray]]:
        """(model inputs, uint8 RGB images) for the request, or INVALID_ARGUMENT naming the first bad image."""
        if not images:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request holds no images")
        if len(images) > self.config.max_images:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(images)} images in one request; the limit is {self.config.max_images}",
            )
        inputs, rgbs = [], []
        for index, data in enumerate(images):
            try:
                rgb = preprocessing.load_image(data, self.spec.image_size, max_pixels=self.config.max_pixels)
                inputs.append(preprocessing.to_model_input(rgb, self.spec))
                rgbs.append(rgb)
            except preprocessing.ImageDecodeError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"image {index}: {exc}")
            except (ValueError, OSError, MemoryError) as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"image {index}: cannot be processed ({exc})")
        return np.stack(inputs), rgbs

    def heatmaps(self, inputs: np.ndarray, rgbs: list[np.ndarray]) -> list[bytes]:
        """PNG overlays of the detector's CAM (Grad-CAM for DCT backbones), one per image."""
        maps, _ = heatmaps.compute_heatmaps(self.primary, inputs)
        pngs = []
        for rgb, heat in zip(rgbs, maps):
            buffer = io.BytesIO()
            Image.fromarray(heatmaps.render(rgb, heat, self.spec.mode)).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs

    def node_timeout(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        timeout = self.config.node_timeout
        if remaining is not None:
            timeout = min(timeout, max(remaining - DEADLINE_MARGIN, 0.01))
        return timeout

    def Attribute(self, request: pb.AttributeRequest, context: grpc.ServicerContext) -> pb.AttributeResponse:
        inputs, rgbs = self.preprocess(list(request.images), context)
        fake_scores, features = self.batcher.run(inputs)
        nodes = [entry for entry in self.registry.list() if entry.backbone_digest == self.bundle.digest]
        healthy = [entry for entry in nodes if entry.status == HEALTHY]
        calls = self.pool.send(
            healthy, wire.features_to_request(features, self.bundle.digest), self.node_timeout(context)
        )
        pngs = self.heatmaps(inputs, rgbs) if request.heatmap else [b""] * len(inputs)  # while the nodes work
        answered, failed = self.pool.collect(calls, len(inputs))
        reasons = {entry.node_id: entry.status_reason for entry in nodes if entry.status != HEALTHY}
        reasons.update({node_id: "did not answer in time or answered wrongly" for node_id in failed})
        missing = sorted(reasons)
        scoring = [entry for entry in healthy if entry.node_id in answered]
        thresholds = {entry.source: entry.threshold for entry in scoring}
        raw = {entry.source: answered[entry.node_id] for entry in scoring}
        calibrations = {entry.source: Calibration.from_dict(entry.calibration) for entry in scoring}
        answers = attribute_batch(fake_scores, raw, calibrations, thresholds, self.rule)
        if self.monitor is not None:
            self.monitor.observe([answer.attribution for answer in answers], scoring)
        return pb.AttributeResponse(results=[
            self.image_result(i, answer, thresholds, missing, pngs[i], reasons) for i, answer in enumerate(answers)
        ])

    def image_result(self, index: int, answer: ImageAttribution, thresholds: dict[str, float], missing: list[str],
                     heatmap_png: bytes, reasons: dict[str, str] | None = None) -> pb.ImageResult:
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
            missing_nodes=missing,
            heatmap_png=heatmap_png,
            p_values=answer.p_values,
            prediction_set=answer.prediction_set,
            alpha=self.rule.alpha,
            missing_reasons=reasons or {},
        )

    def ListSources(self, request: pb.ListSourcesRequest, context: grpc.ServicerContext) -> pb.ListSourcesResponse:
        return pb.ListSourcesResponse(
            sources=[self.source_info(entry) for entry in self.registry.list()], backbone=self.backbone
        )

    def status_of(self, entry: NodeEntry) -> str:
        return entry.status if entry.backbone_digest == self.bundle.digest else INCOMPATIBLE

    def source_info(self, entry: NodeEntry) -> pb.SourceInfo:
        """What query clients may see of a node: never its endpoint (only the admin's registry shows it)."""
        return pb.SourceInfo(
            node_id=entry.node_id,
            source=entry.source,
            status=self.status_of(entry),
            status_reason=entry.status_reason,
            last_heartbeat=_timestamp(entry.last_heartbeat),
            registered_at=_timestamp(entry.registered_at),
            backbone_digest=entry.backbone_digest,
            head_digest=entry.head_digest,
            calibration=pb.Calibration(**entry.calibration),
            threshold=entry.threshold,
            metrics=wire.metrics_to_struct(entry.metrics),
        )

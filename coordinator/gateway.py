"""The coordinator's server: the query gateway (`AttributionService`) and the node registry service.

A query costs one trunk pass plus N tiny heads in parallel, not N backbones: the gateway decodes
and preprocesses each image once (`preprocessing.load_image` + `to_model_input`, the steps of the
shared `preprocessing.preprocess`, keeping the RGB image for heatmaps), runs the serving model
once per micro-batch (concurrent requests are merged for up to `batch_window_ms`), sends the fp16
trunk features to every healthy node on the gateway's backbone in parallel under one deadline,
calibrates each raw score with the calibration the node registered, and decides with
`attribution.decide`, the same rule as offline prediction. A node that is slow, down or broken
only shows up in `missing_nodes`; it never fails the query.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1.health import HealthServicer
from google.protobuf import timestamp_pb2
from PIL import Image

from coordinator.registry import HEALTHY, IdentityMismatch, NodeEntry, Registry, RegistryError, SourceTaken, UnknownNode
from shared_backbone import attribution, heatmaps, models, preprocessing, rpc
from shared_backbone import bundle as bundle_lib
from shared_backbone.calibration import Calibration
from shared_backbone.config import CoordinatorConfig, GatewayConfig, TLSConfig
from shared_backbone.proto import wire
from shared_backbone.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ATTRIBUTION_SERVICE = pb.DESCRIPTOR.services_by_name["AttributionService"].full_name
REGISTRY_SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name
INCOMPATIBLE = "incompatible"
DEADLINE_MARGIN = 0.05


class GatewayStartError(RuntimeError):
    """The gateway cannot start (bundle, key, token, registry or port); the message says which."""


class TrunkBatcher:
    """Runs the serving model on micro-batches merged from concurrent requests.

    Requests queue their preprocessed inputs; one worker thread takes the first, waits up to
    `window` seconds for more (until `max_batch` images), runs the model once and hands every
    request its slice. A lone request therefore runs with exactly its own batch.
    """

    def __init__(self, serving: object, *, window: float, max_batch: int) -> None:
        self.serving = serving
        self.window = window
        self.max_batch = max_batch
        self.runs = 0
        self._queue: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="trunk-batcher", daemon=True)
        self._thread.start()

    def run(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fake scores (N,) float64, wire features (N, H/4, W/4, 16) float16) for one request."""
        future: Future = Future()
        self._queue.put((inputs, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.window
            while size < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                if size + len(item[0]) > self.max_batch:
                    self._run(batch)
                    batch, size = [], 0
                batch.append(item)
                size += len(item[0])
            if batch:
                self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            inputs = batch[0][0] if len(batch) == 1 else np.concatenate([item[0] for item in batch])
            fake, features = self.serving(inputs, training=False)
            fake = np.asarray(fake).reshape(-1).astype(np.float64)
            features = attribution.to_wire_features(np.asarray(features))
            self.runs += 1
        except Exception as exc:  # noqa: BLE001 - every waiting request must get the error, not hang
            for _, future in batch:
                future.set_exception(exc)
            return
        start = 0
        for item, future in batch:
            end = start + len(item)
            future.set_result((fake[start:end], features[start:end]))
            start = end


@dataclass
class _NodeChannel:
    key: tuple[str, str, int]
    channel: grpc.Channel
    stub: pb_grpc.HeadServiceStub


class NodePool:
    """gRPC channels to the nodes, renewed when a node re-registers (new endpoint or restart)."""

    def __init__(self, tls: TLSConfig, max_message_mb: int) -> None:
        self.tls = tls
        self.max_message_mb = max_message_mb
        self._channels: dict[str, _NodeChannel] = {}
        self._ok: dict[str, bool] = {}
        self._lock = threading.Lock()

    def stub(self, entry: NodeEntry) -> pb_grpc.HeadServiceStub:
        key = (entry.node_id, entry.endpoint, entry.generation)
        with self._lock:
            current = self._channels.get(entry.node_id)
            if current is None or current.key != key:
                if current is not None:
                    current.channel.close()
                channel = rpc.open_channel(entry.endpoint, self.tls, self.max_message_mb)
                current = _NodeChannel(key, channel, pb_grpc.HeadServiceStub(channel))
                self._channels[entry.node_id] = current
            return current.stub

    def send(self, entries: list[NodeEntry], request: pb.ScoreRequest, timeout: float) -> list[tuple[NodeEntry, grpc.Future]]:
        """Starts every node's Score call at once; `collect` waits for them."""
        return [(entry, self.stub(entry).Score.future(request, timeout=timeout)) for entry in entries]

    def collect(self, calls: list[tuple[NodeEntry, grpc.Future]], batch: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """Raw scores per node id from every node that answered correctly in time, and the rest."""
        answered: dict[str, np.ndarray] = {}
        failed: list[str] = []
        for entry, call in calls:
            try:
                response = call.result()
                problem = _check_response(entry, response, batch)
            except grpc.RpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
            if problem:
                failed.append(entry.node_id)
            else:
                answered[entry.node_id] = np.asarray(response.raw_scores, dtype=np.float64)
            self._note(entry, problem)
        return answered, failed

    def _note(self, entry: NodeEntry, problem: str | None) -> None:
        """Logs a node's transitions between answering and failing, not every query."""
        was_ok = self._ok.get(entry.node_id, True)
        self._ok[entry.node_id] = problem is None
        if problem and was_ok:
            log.warning("node %s (%s at %s) did not answer: %s", entry.node_id, entry.source, entry.endpoint, problem)
        elif not problem and not was_ok:
            log.info("node %s (%s) answers again", entry.node_id, entry.source)

    def close(self) -> None:
        with self._lock:
            for item in self._channels.values():
                item.channel.close()
            self._channels.clear()


def _check_response(entry: NodeEntry, response: pb.ScoreResponse, batch: int) -> str | None:
    if len(response.raw_scores) != batch:
        return f"returned {len(response.raw_scores)} scores for {batch} images"
    if response.source != entry.source or response.head_digest != entry.head_digest:
        return f"serves {response.source}/{response.head_digest[:12]}, registered {entry.source}/{entry.head_digest[:12]}"
    return None


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
        self.serving = models.build_serving_model(self.primary)
        self.batcher = TrunkBatcher(self.serving, window=config.batch_window_ms / 1000.0, max_batch=config.max_batch)
        self.pool = NodePool(config.tls, config.max_message_mb)

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
        missing = sorted({entry.node_id for entry in nodes if entry.status != HEALTHY} | set(failed))
        scoring = [entry for entry in healthy if entry.node_id in answered]
        calibrations = {entry.node_id: Calibration.from_dict(entry.calibration) for entry in scoring}
        thresholds = {entry.source: entry.threshold for entry in scoring}
        results = []
        for i, fake in enumerate(fake_scores):
            raw = {entry.source: float(answered[entry.node_id][i]) for entry in scoring}
            calibrated = {
                entry.source: float(calibrations[entry.node_id].apply(raw[entry.source])) for entry in scoring
            }
            results.append(
                pb.ImageResult(
                    index=i,
                    fake_score=float(fake),
                    scores=calibrated,
                    raw_scores=raw,
                    thresholds=thresholds,
                    attribution=attribution.decide(float(fake), calibrated, thresholds, self.config.fake_threshold),
                    fake_threshold=self.config.fake_threshold,
                    backbone=self.backbone,
                    missing_nodes=missing,
                    heatmap_png=pngs[i],
                )
            )
        return pb.AttributeResponse(results=results)

    def ListSources(self, request: pb.ListSourcesRequest, context: grpc.ServicerContext) -> pb.ListSourcesResponse:
        return pb.ListSourcesResponse(
            sources=[self.source_info(entry) for entry in self.registry.list()], backbone=self.backbone
        )

    def status_of(self, entry: NodeEntry) -> str:
        return entry.status if entry.backbone_digest == self.bundle.digest else INCOMPATIBLE

    def source_info(self, entry: NodeEntry) -> pb.SourceInfo:
        return pb.SourceInfo(
            node_id=entry.node_id,
            source=entry.source,
            endpoint=entry.endpoint,
            status=self.status_of(entry),
            last_heartbeat=_timestamp(entry.last_heartbeat),
            registered_at=_timestamp(entry.registered_at),
            backbone_digest=entry.backbone_digest,
            head_digest=entry.head_digest,
            calibration=pb.Calibration(**entry.calibration),
            threshold=entry.threshold,
            metrics=wire.metrics_to_struct(entry.metrics),
        )


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


@dataclass
class CoordinatorServer:
    """A running coordinator server: gateway + registry service + health + reflection."""

    server: grpc.Server
    port: int
    gateway: Gateway
    registry: Registry
    health: HealthServicer

    def stop(self, grace: float = 2.0) -> None:
        rpc.set_not_serving(self.health)
        self.server.stop(grace).wait(grace + 1)
        self.gateway.close()
        self.registry.close()


def load_bundle_verified(config: CoordinatorConfig) -> bundle_lib.Bundle:
    try:
        return bundle_lib.load_configured_bundle(config.bundle, config.public_key)
    except bundle_lib.BundleError as exc:
        raise GatewayStartError(str(exc)) from None


def check_gateway_config(config: GatewayConfig) -> None:
    """Refuses settings that would make the gateway misbehave, naming the key."""
    positive = ("max_message_mb", "max_images", "max_pixels", "node_timeout", "heartbeat_interval", "stale_after",
                "max_batch", "workers")
    for key in positive:
        if getattr(config, key) <= 0:
            raise GatewayStartError(f"gateway.{key} must be positive, got {getattr(config, key)}")
    if config.batch_window_ms < 0:
        raise GatewayStartError(f"gateway.batch_window_ms must be >= 0, got {config.batch_window_ms}")
    if config.stale_after <= config.heartbeat_interval:
        raise GatewayStartError(
            f"gateway.stale_after ({config.stale_after}) must exceed gateway.heartbeat_interval ({config.heartbeat_interval})"
        )
    if not 0.0 <= config.fake_threshold <= 1.0:
        raise GatewayStartError(f"gateway.fake_threshold must be in [0, 1], got {config.fake_threshold}")


def start_coordinator(config: CoordinatorConfig) -> CoordinatorServer:
    """Verifies the bundle, opens the registry and serves; returns once listening."""
    gateway_config = config.gateway
    check_gateway_config(gateway_config)
    bundle = load_bundle_verified(config)
    try:
        registration_token = rpc.read_secret(
            gateway_config.registration_token, gateway_config.registration_token_file, "gateway.registration_token"
        )
        query_token = rpc.read_secret(gateway_config.query_token, gateway_config.query_token_file, "gateway.query_token")
    except rpc.RpcConfigError as exc:
        raise GatewayStartError(str(exc)) from None
    if not registration_token:
        raise GatewayStartError(
            "gateway.registration_token (or gateway.registration_token_file) must be set: nodes register with it"
        )
    try:
        registry = Registry(config.registry, stale_after=gateway_config.stale_after)
    except RegistryError as exc:
        raise GatewayStartError(str(exc)) from None
    gateway = Gateway(bundle, registry, gateway_config)
    server = rpc.create_server(
        workers=gateway_config.workers,
        max_message_mb=gateway_config.max_message_mb,
        tokens={REGISTRY_SERVICE: registration_token, ATTRIBUTION_SERVICE: query_token},
    )
    pb_grpc.add_AttributionServiceServicer_to_server(gateway, server)
    pb_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry, gateway, gateway_config), server)
    health = rpc.enable_health_and_reflection(server, [ATTRIBUTION_SERVICE, REGISTRY_SERVICE])
    try:
        port = rpc.bind(server, gateway_config.host, gateway_config.port, gateway_config.tls)
    except rpc.RpcConfigError as exc:
        gateway.close()
        registry.close()
        raise GatewayStartError(str(exc)) from None
    server.start()
    nodes = registry.list()
    log.info(
        "coordinator serving backbone %s (%s) on %s:%d; registry %s holds %d node(s)%s",
        bundle.version, bundle.short_digest, gateway_config.host, port, config.registry, len(nodes),
        "; queries need a token" if query_token else "",
    )
    return CoordinatorServer(server, port, gateway, registry, health)


def serve_forever(config: CoordinatorConfig) -> int:
    """`attribnet coordinator serve`: runs until SIGINT/SIGTERM."""
    stop = rpc.stop_on_signals()
    coordinator = start_coordinator(config)
    while not stop.wait(0.5):
        pass
    coordinator.stop()
    return 0

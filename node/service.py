"""A node's serving side: the HeadService over its trained head, and its registration with the coordinator.

`start_node(config)` verifies the bundle with the coordinator's public key, loads the head from
STATE_DIR/head (refused unless bound to that bundle), serves `HeadService` (+ health, reflection),
and starts a `Registrar` that registers, heartbeats, backs off while the coordinator is away and
registers again when it returns (a restarted coordinator, or one that forgot the node).
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
from grpc_health.v1.health import HealthServicer

from shared_backbone import bundle as bundle_lib
from shared_backbone import heads, rpc
from shared_backbone.config import NodeConfig
from shared_backbone.proto import wire
from shared_backbone.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

HEAD_DIR = "head"
SECRET_FILE = "node.secret"
HEAD_SERVICE = pb.DESCRIPTOR.services_by_name["HeadService"].full_name
# The coordinator refuses these for good: retrying cannot help, so the node stops with the reason.
FATAL_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
)
INITIAL_BACKOFF = 0.5


class NodeStartError(RuntimeError):
    """The node cannot start (bundle, head, key, token or port); the message says which."""


class HeadServicer(pb_grpc.HeadServiceServicer):
    """Scores batches of wire features with one head; validates shape and dtype first."""

    def __init__(self, head: heads.Head, bundle: bundle_lib.Bundle, node_id: str, max_batch: int) -> None:
        self.head = head
        self.bundle = bundle
        self.node_id = node_id
        self.max_batch = max_batch
        self.feature_shape = tuple(int(s) for s in bundle.manifest["feature_shape"])
        self._lock = threading.Lock()

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


class Registrar(threading.Thread):
    """Registers the node, then heartbeats; every call has a deadline and failures back off.

    After any failed call the next success path is a fresh Register (idempotent), so a coordinator
    that restarted, or lost the entry, learns the node again without operator action. Refusals
    that cannot heal (wrong token, another node's id, source taken) end the loop and are kept in
    `fatal_error` for the server to report.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        request: pb.RegisterRequest,
        *,
        token: str,
        secret: str,
        heartbeat_interval: float,
        rpc_timeout: float,
        max_backoff: float,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name=f"registrar-{request.node_id}", daemon=True)
        self.stub = pb_grpc.RegistryServiceStub(channel)
        self.request = request
        self.metadata = (*rpc.bearer(token), (rpc.NODE_SECRET, secret))
        self.configured_interval = heartbeat_interval
        self.interval = heartbeat_interval or 5.0
        self.rpc_timeout = rpc_timeout
        self.max_backoff = max_backoff
        self.on_fatal = on_fatal
        self.stop_event = threading.Event()
        self.registered = threading.Event()
        self.registrations = 0
        self.fatal_error: str | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        backoff = INITIAL_BACKOFF
        healthy = True
        while not self.stop_event.is_set():
            try:
                if self.registered.is_set():
                    self.stub.Heartbeat(
                        pb.HeartbeatRequest(node_id=self.request.node_id), metadata=self.metadata, timeout=self.rpc_timeout
                    )
                else:
                    self._register()
            except grpc.RpcError as exc:
                code = exc.code()
                if code in FATAL_CODES:
                    self.fatal_error = f"coordinator refused node {self.request.node_id!r}: {code.name}: {exc.details()}"
                    log.error("%s", self.fatal_error)
                    if self.on_fatal:
                        self.on_fatal(self.fatal_error)
                    return
                if code == grpc.StatusCode.NOT_FOUND:
                    log.warning("coordinator does not know node %s; registering again", self.request.node_id)
                    self.registered.clear()
                    continue
                if healthy:
                    log.warning("coordinator unreachable (%s: %s); retrying with backoff", code.name, exc.details())
                healthy = False
                self.registered.clear()
                self.stop_event.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if not healthy:
                log.info("coordinator reachable again")
            healthy, backoff = True, INITIAL_BACKOFF
            self.stop_event.wait(self.interval)

    def _register(self) -> None:
        response = self.stub.Register(self.request, metadata=self.metadata, timeout=self.rpc_timeout)
        if not self.configured_interval and response.heartbeat_interval_seconds > 0:
            self.interval = response.heartbeat_interval_seconds
        self.registrations += 1
        self.registered.set()
        if response.status != "healthy":
            log.warning(
                "registered, but the coordinator's backbone is %s and this head's is %s: it will not be queried",
                response.backbone.digest[:12], self.request.backbone_digest[:12],
            )
        else:
            log.info(
                "registered node %s (source %s, endpoint %s); heartbeat every %.1fs",
                self.request.node_id, self.request.source, self.request.endpoint, self.interval,
            )


@dataclass
class NodeServer:
    """A running node: its gRPC server, bound port and registrar."""

    server: grpc.Server
    port: int
    health: HealthServicer
    registrar: Registrar
    channel: grpc.Channel
    stopped: threading.Event

    def stop(self, grace: float = 2.0) -> None:
        self.registrar.stop()
        rpc.set_not_serving(self.health)
        self.server.stop(grace).wait(grace + 1)
        self.channel.close()
        self.stopped.set()


def node_secret(config: NodeConfig) -> str:
    """The node's identity secret; created (0600) on first start so restarts keep the same identity."""
    path = Path(config.serve.secret_file or Path(config.state_dir) / SECRET_FILE)
    if path.is_file():
        value = path.read_text().strip()
        if not value:
            raise NodeStartError(f"serve.secret_file {path}: empty")
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    path.write_text(value + "\n")
    path.chmod(0o600)
    log.info("created node secret %s", path)
    return value


def load_verified(config: NodeConfig) -> tuple[bundle_lib.Bundle, heads.Head]:
    """The bundle verified with the coordinator's key and the head bound to it."""
    try:
        bundle = bundle_lib.load_configured_bundle(config.backbone, config.public_key, keys=("backbone", "public_key"))
        head = heads.load_head(Path(config.state_dir) / HEAD_DIR, bundle)
    except (bundle_lib.BundleError, heads.HeadError) as exc:
        raise NodeStartError(str(exc)) from None
    return bundle, head


def start_node(config: NodeConfig, *, on_fatal: Callable[[str], None] | None = None) -> NodeServer:
    """Loads, serves and registers; returns once the server listens (registration runs in background)."""
    serve = config.serve
    if serve.host in ("0.0.0.0", "::", "[::]") and not serve.advertise:
        raise NodeStartError(f"serve.host is {serve.host}: set serve.advertise to the host:port the coordinator can dial")
    for key in ("rpc_timeout", "max_backoff", "max_batch", "max_message_mb", "workers"):
        if getattr(serve, key) <= 0:
            raise NodeStartError(f"serve.{key} must be positive, got {getattr(serve, key)}")
    bundle, head = load_verified(config)
    node_id = config.node_id or config.source or head.source
    if config.source and config.source != head.source:
        raise NodeStartError(f"source is {config.source!r} but the head in {config.state_dir}/{HEAD_DIR} is for {head.source!r}")
    try:
        token = rpc.read_secret(serve.token, serve.token_file, "serve.token")
    except rpc.RpcConfigError as exc:
        raise NodeStartError(str(exc)) from None
    if not token:
        raise NodeStartError("serve.token (or serve.token_file) must be set: the coordinator's registration token")
    secret = node_secret(config)

    server = rpc.create_server(workers=serve.workers, max_message_mb=serve.max_message_mb)
    pb_grpc.add_HeadServiceServicer_to_server(HeadServicer(head, bundle, node_id, serve.max_batch), server)
    health = rpc.enable_health_and_reflection(server, [HEAD_SERVICE])
    try:
        port = rpc.bind(server, serve.host, serve.port, serve.tls)
    except rpc.RpcConfigError as exc:
        raise NodeStartError(str(exc)) from None
    server.start()
    endpoint = serve.advertise or f"{serve.host}:{port}"
    log.info("node %s serving head %s (%s) on %s:%d", node_id, head.source, head.digest[:12], serve.host, port)

    request = pb.RegisterRequest(
        node_id=node_id,
        source=head.source,
        endpoint=endpoint,
        backbone_digest=bundle.digest,
        backbone_version=bundle.version,
        head_digest=head.digest,
        calibration=wire.calibration_to_proto(head.calibration),
        threshold=head.threshold,
        metrics=wire.metrics_to_struct(head.metrics),
    )
    channel = rpc.open_channel(serve.coordinator, serve.tls, serve.max_message_mb)
    registrar = Registrar(
        channel,
        request,
        token=token,
        secret=secret,
        heartbeat_interval=serve.heartbeat_interval,
        rpc_timeout=serve.rpc_timeout,
        max_backoff=serve.max_backoff,
        on_fatal=on_fatal,
    )
    registrar.start()
    return NodeServer(server, port, health, registrar, channel, threading.Event())


def serve_forever(config: NodeConfig) -> int:
    """`attribnet node serve`: runs until SIGINT/SIGTERM or a fatal registration refusal."""
    stop = rpc.stop_on_signals()
    node = start_node(config, on_fatal=lambda reason: stop.set())
    while not stop.wait(0.5):
        pass
    node.stop()
    if node.registrar.fatal_error:
        raise NodeStartError(node.registrar.fatal_error)
    return 0

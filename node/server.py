"""A node's serving side: the HeadService over its trained head, and its registration with the coordinator.

`start_node(config)` verifies the bundle with the coordinator's public key, loads the head from
STATE_DIR/head (refused unless bound to that bundle), serves `HeadService` (+ health, reflection),
and starts a `Registrar` that registers, heartbeats, backs off while the coordinator is away and
registers again when it returns (a restarted coordinator, or one that forgot the node).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1.health import HealthServicer

from node import state
from node.config import BUNDLE_KEYS, NodeConfig, NodeServeConfig
from node.head_service import HEAD_SERVICE, HeadServicer
from node.registrar import Registrar
from shared_backbone.model import bundle as bundle_lib
from shared_backbone.model import heads
from shared_backbone.protocol import rpc, wire
from shared_backbone.protocol.metrics import MetricsInterceptor, ServerMetrics, serve_metrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class NodeStartError(RuntimeError):
    """The node cannot start (bundle, head, key, token or port); the message says which."""


@dataclass
class NodeServer:
    """A running node: its gRPC server, bound port and registrar."""

    server: grpc.Server
    port: int
    health: HealthServicer
    registrar: Registrar
    channel: grpc.Channel
    servicer: HeadServicer
    metrics: ServerMetrics
    metrics_port: int = -1  # the bound /metrics port, -1 when off

    def stop(self, grace: float = 2.0) -> None:
        self.registrar.stop()
        rpc.set_not_serving(self.health)
        self.server.stop(grace).wait(grace + 1)
        self.servicer.close()
        self.channel.close()
        self.metrics.close()


def load_verified(config: NodeConfig) -> tuple[bundle_lib.Bundle, heads.Head]:
    """The bundle verified with the coordinator's key and the head bound to it."""
    try:
        bundle = bundle_lib.load_configured_bundle(config.backbone, config.public_key, keys=BUNDLE_KEYS)
        head = heads.load_head(state.head_dir(config), bundle)
    except (bundle_lib.BundleError, heads.HeadError) as exc:
        raise NodeStartError(str(exc)) from None
    return bundle, head


def check_serve_config(serve: NodeServeConfig) -> None:
    """Refuses serving settings that would make the node misbehave, naming the key."""
    if serve.host in ("0.0.0.0", "::", "[::]") and not serve.advertise:
        raise NodeStartError(f"serve.host is {serve.host}: set serve.advertise to the host:port the coordinator can dial")
    for key in ("rpc_timeout", "max_backoff", "max_batch", "max_message_mb", "workers", "max_queue_rows",
                "request_timeout", "max_concurrent_rpcs"):
        if getattr(serve, key) <= 0:
            raise NodeStartError(f"serve.{key} must be positive, got {getattr(serve, key)}")
    if serve.batch_window_ms < 0:
        raise NodeStartError(f"serve.batch_window_ms must be >= 0, got {serve.batch_window_ms}")


def start_node(config: NodeConfig, *, on_fatal: Callable[[str], None] | None = None) -> NodeServer:
    """Loads, serves and registers; returns once the server listens (registration runs in background)."""
    serve = config.serve
    check_serve_config(serve)
    bundle, head = load_verified(config)
    node_id = config.node_id or config.source or head.source
    if config.source and config.source != head.source:
        raise NodeStartError(f"source is {config.source!r} but the head in {state.head_dir(config)} is for {head.source!r}")
    try:
        token = rpc.read_secret(serve.token, serve.token_file, "serve.token")
    except rpc.RpcConfigError as exc:
        raise NodeStartError(str(exc)) from None
    if not token:
        raise NodeStartError("serve.token (or serve.token_file) must be set: the coordinator's registration token")
    try:
        secret = state.node_secret(config)
    except state.StateError as exc:
        raise NodeStartError(str(exc)) from None

    metrics = ServerMetrics()
    servicer = HeadServicer(
        head, bundle, node_id, serve.max_batch, window=serve.batch_window_ms / 1000.0, max_queue=serve.max_queue_rows,
        request_timeout=serve.request_timeout, metrics=metrics,
    )
    server = rpc.create_server(
        workers=serve.workers, max_message_mb=serve.max_message_mb, max_concurrent_rpcs=serve.max_concurrent_rpcs,
        interceptors=[MetricsInterceptor(metrics, serve.access_log)],
    )
    pb_grpc.add_HeadServiceServicer_to_server(servicer, server)
    health = rpc.enable_health_and_reflection(server, [HEAD_SERVICE])
    try:
        port = rpc.bind(server, serve.host, serve.port, serve.tls)
        metrics_port = serve_metrics(metrics, serve.metrics_host, serve.metrics_port)
    except rpc.RpcConfigError as exc:
        servicer.close()
        raise NodeStartError(str(exc)) from None
    server.start()
    endpoint = serve.advertise or f"{serve.host}:{port}"
    log.info("node %s serving head %s (%s) on %s:%d", node_id, head.source, head.digest[:12], serve.host, port)

    request = registration_request(node_id, endpoint, bundle, head)
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
    return NodeServer(server, port, health, registrar, channel, servicer, metrics, metrics_port)


def registration_request(node_id: str, endpoint: str, bundle: bundle_lib.Bundle, head: heads.Head) -> pb.RegisterRequest:
    """What the node tells the coordinator about itself."""
    return pb.RegisterRequest(
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

"""A node's serving side: the HeadService over its trained head, and its registration with the coordinator.

`start_node(config)` verifies the bundle with the coordinator's public key, loads the head from
STATE_DIR/head (refused unless bound to that bundle), serves `HeadService` (+ health, reflection),
and starts a `Registrar` that registers, heartbeats, backs off while the coordinator is away and
registers again when it returns (a restarted coordinator, or one that forgot the node). A clean
stop (`NodeServer.stop`, which `attribnet node serve` runs on SIGINT/SIGTERM) first leaves the
registry with a signed `Deregister`, so the gateway stops dialling the node at once.

`HeadService` answers only the gateway: an interceptor refuses every call without the credential
the coordinator returned at registration (none before it). A `HeadReloader` watches STATE_DIR/head
(written to a temporary folder and renamed into place by `heads.save_head`) and serves and
registers a retrained head without a restart.
"""

from __future__ import annotations

import logging
import threading
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
from shared_backbone.protocol.registration import Registration
from shared_backbone.runtime import rpc
from shared_backbone.runtime.prometheus import MetricsInterceptor, ServerMetrics, serve_metrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 2.0  # seconds between looks at STATE_DIR/head


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
    reloader: "HeadReloader | None" = None

    def stop(self, grace: float = 2.0) -> None:
        """Leaves the registry first (bounded; the gateway stops dialling at once), then stops serving."""
        if self.reloader is not None:
            self.reloader.stop()
        self.registrar.leave()
        rpc.set_not_serving(self.health)
        self.server.stop(grace).wait(grace + 1)
        self.channel.close()
        self.servicer.close()
        self.metrics.close()


def load_verified(config: NodeConfig) -> tuple[bundle_lib.Bundle, heads.Head]:
    """The bundle verified with the coordinator's key and the head bound to it."""
    try:
        bundle = bundle_lib.load_configured_bundle(config.backbone, config.public_key, keys=BUNDLE_KEYS)
        head = heads.load_head(state.head_dir(config), bundle)
    except (bundle_lib.BundleError, heads.HeadError) as exc:
        raise NodeStartError(str(exc)) from None
    return bundle, head


def _identity(config: NodeConfig) -> tuple[str, str]:
    """(secret, enrolment token or "") of this node; NodeStartError naming the file otherwise."""
    try:
        return state.node_secret(config), state.enrolment_token(config)
    except state.StateError as exc:
        raise NodeStartError(str(exc)) from None


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
    try:
        rpc.check_plaintext(rpc.target_host(serve.coordinator), serve.tls, serve.insecure, "serve.coordinator")
    except rpc.RpcConfigError as exc:
        raise NodeStartError(str(exc)) from None


def register_request(node_id: str, endpoint: str, bundle: bundle_lib.Bundle, head: heads.Head) -> pb.RegisterRequest:
    return Registration(
        node_id=node_id, source=head.source, endpoint=endpoint, head_digest=head.digest, backbone_digest=bundle.digest,
        backbone_version=bundle.version, calibration=head.calibration, threshold=head.threshold, metrics=head.metrics,
    ).to_proto()


def start_node(config: NodeConfig, *, on_fatal: Callable[[str], None] | None = None) -> NodeServer:
    """Loads, serves and registers; returns once the server listens (registration runs in background)."""
    serve = config.serve
    check_serve_config(serve)
    bundle, head = load_verified(config)
    node_id = config.node_id or config.source or head.source
    if config.source and config.source != head.source:
        raise NodeStartError(f"source is {config.source!r} but the head in {state.head_dir(config)} is for {head.source!r}")
    secret, enrolment_token = _identity(config)
    registrars: list[Registrar] = []
    metrics = ServerMetrics()
    servicer = HeadServicer(
        head, bundle, node_id, serve.max_batch, window=serve.batch_window_ms / 1000.0, max_queue=serve.max_queue_rows,
        request_timeout=serve.request_timeout, metrics=metrics,
    )
    server = rpc.create_server(
        workers=serve.workers, max_message_mb=serve.max_message_mb, max_concurrent_rpcs=serve.max_concurrent_rpcs,
        tokens={HEAD_SERVICE: lambda: registrars[0].gateway_credential if registrars else ""},
        interceptors=[MetricsInterceptor(metrics, serve.access_log)],
    )
    pb_grpc.add_HeadServiceServicer_to_server(servicer, server)
    health = rpc.enable_health_and_reflection(server, [HEAD_SERVICE])
    try:
        port = rpc.bind(server, serve.host, serve.port, serve.tls, insecure=serve.insecure)
        metrics_port = serve_metrics(metrics, serve.metrics_host, serve.metrics_port)
    except rpc.RpcConfigError as exc:
        servicer.close()
        raise NodeStartError(str(exc)) from None
    server.start()
    endpoint = serve.advertise or f"{serve.host}:{port}"
    log.info("node %s serving head %s (%s) on %s:%d", node_id, head.source, head.digest[:12], serve.host, port)
    channel = rpc.open_channel(serve.coordinator, serve.tls, serve.max_message_mb)
    registrar = Registrar(
        channel, register_request(node_id, endpoint, bundle, head), enrolment_token=enrolment_token, secret=secret,
        heartbeat_interval=serve.heartbeat_interval, rpc_timeout=serve.rpc_timeout, max_backoff=serve.max_backoff,
        on_fatal=on_fatal,
    )
    registrars.append(registrar)
    registrar.start()
    reloader = HeadReloader(config, bundle, servicer, registrar, endpoint)
    reloader.start()
    return NodeServer(server, port, health, registrar, channel, servicer, metrics, metrics_port, reloader)


class HeadReloader(threading.Thread):
    """Serves and re-registers a head that training renamed into STATE_DIR/head (no restart)."""

    def __init__(self, config: NodeConfig, bundle: bundle_lib.Bundle, servicer: HeadServicer, registrar: Registrar,
                 endpoint: str, interval: float = RELOAD_INTERVAL) -> None:
        super().__init__(name="head-reloader", daemon=True)
        self.config, self.bundle, self.servicer, self.registrar = config, bundle, servicer, registrar
        self.endpoint, self.interval = endpoint, interval
        self.stop_event = threading.Event()
        self.reloads = 0

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.check()

    def check(self) -> bool:
        """Loads the head in STATE_DIR/head when its digest changed; True when it swapped heads."""
        try:
            meta = heads.read_head_meta(state.head_dir(self.config))
            if meta.get("weights_sha256") == self.servicer.head.digest:
                return False
            head = heads.load_head(state.head_dir(self.config), self.bundle)
        except (heads.HeadError, OSError, ValueError) as exc:
            log.warning("head in %s not reloaded: %s", state.head_dir(self.config), exc)
            return False
        if head.source != self.servicer.head.source:
            log.warning("head in %s is for %s, not %s: not reloaded", state.head_dir(self.config), head.source,
                        self.servicer.head.source)
            return False
        self.servicer.swap_head(head)
        self.registrar.update(register_request(self.registrar.request.node_id, self.endpoint, self.bundle, head))
        self.reloads += 1
        log.info("reloaded head %s (%s)", head.source, head.digest[:12])
        return True


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

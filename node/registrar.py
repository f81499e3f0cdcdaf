"""The node's registration with the coordinator: register, heartbeat, back off, register again."""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable

import grpc

from shared_backbone.protocol import rpc
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# The coordinator refuses these for good: retrying cannot help, so the node stops with the reason.
FATAL_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
)
INITIAL_BACKOFF = 0.5


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

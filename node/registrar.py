"""The node's registration with the coordinator: register, heartbeat, back off, register again, leave.

Every call is signed: the registrar asks for a challenge, signs it with the node's key (derived
from its secret, which never leaves the node) together with the request's digest, and, while the
node id is not yet bound, adds the proof of its enrolment token (`shared_backbone.protocol.identity`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

import grpc

from shared_backbone.protocol import identity
from shared_backbone.runtime import rpc
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
LEAVE_TIMEOUT = 3.0  # seconds a stopping node spends at most on leaving the registry (challenge + Deregister)


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
        enrolment_token: str,
        secret: str,
        heartbeat_interval: float,
        rpc_timeout: float,
        max_backoff: float,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name=f"registrar-{request.node_id}", daemon=True)
        self.stub = pb_grpc.RegistryServiceStub(channel)
        self.request = request
        self.key = identity.node_key(secret)
        self.public_key = identity.public_key_hex(self.key)
        self.enrolment_token = enrolment_token
        self.gateway_credential = ""  # what the gateway presents on HeadService (from RegisterResponse)
        self.configured_interval = heartbeat_interval
        self.interval = heartbeat_interval or 5.0
        self.rpc_timeout = rpc_timeout
        self.max_backoff = max_backoff
        self.on_fatal = on_fatal
        self.stop_event = threading.Event()
        self.registered = threading.Event()
        self.registrations = 0
        self.generation = 0  # of the coordinator's entry for our last accepted Register (what Deregister names)
        self.fatal_error: str | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def leave(self, timeout: float = LEAVE_TIMEOUT) -> bool:
        """Stops registering, then takes the node out of the registry (signed Deregister); True when it left.

        Bounded by `timeout` in all: a coordinator that is away or refuses costs one log line, never
        the node's shutdown. A node that never registered has nothing to leave.
        """
        deadline = time.monotonic() + min(timeout, self.rpc_timeout)
        self.stop()
        if self.is_alive() and self is not threading.current_thread():
            self.join(max(deadline - time.monotonic(), 0.0))  # no heartbeat or Register may follow the leave
        if not self.generation:
            return False
        request = pb.DeregisterRequest(node_id=self.request.node_id, generation=self.generation)
        try:
            metadata = self._signed(identity.DEREGISTER, request, timeout=max(deadline - time.monotonic(), 0.05))
            self.stub.Deregister(request, metadata=metadata, timeout=max(deadline - time.monotonic(), 0.05))
        except grpc.RpcError as exc:
            log.warning("could not leave the coordinator's registry (%s: %s); it marks node %s stale after its timeout",
                        exc.code().name, exc.details(), self.request.node_id)
            return False
        log.info("node %s left the coordinator's registry", self.request.node_id)
        return True

    def update(self, request: pb.RegisterRequest) -> None:
        """Registers `request` next (a reloaded head: new digest, calibration, threshold)."""
        self.request = request
        self.registered.clear()

    def run(self) -> None:
        backoff = INITIAL_BACKOFF
        healthy = True
        while not self.stop_event.is_set():
            try:
                if self.registered.is_set():
                    beat = pb.HeartbeatRequest(node_id=self.request.node_id)
                    self.stub.Heartbeat(beat, metadata=self._signed(identity.HEARTBEAT, beat), timeout=self.rpc_timeout)
                else:
                    self._register()
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.ABORTED:  # challenge expired (e.g. the coordinator restarted)
                    self.stop_event.wait(INITIAL_BACKOFF * random.uniform(0.1, 0.3))
                    continue
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

    def _signed(self, purpose: str, message, timeout: float | None = None) -> tuple[tuple[str, str], ...]:
        """Metadata proving the node's key over a fresh challenge and exactly this message."""
        node_id = self.request.node_id
        challenge = self.stub.Challenge(pb.ChallengeRequest(node_id=node_id), timeout=timeout or self.rpc_timeout).challenge
        signature = identity.sign(self.key, purpose, challenge, node_id, identity.message_digest(message))
        metadata = [(rpc.PUBLIC_KEY_METADATA, self.public_key), (rpc.CHALLENGE_METADATA, challenge),
                    (rpc.SIGNATURE_METADATA, signature)]
        if purpose == identity.REGISTER and self.enrolment_token:
            proof = identity.enrolment_proof(self.enrolment_token, challenge, node_id, self.request.source, self.public_key)
            metadata.append((rpc.ENROLMENT_PROOF_METADATA, proof))
        return tuple(metadata)

    def _register(self) -> None:
        response = self.stub.Register(
            self.request, metadata=self._signed(identity.REGISTER, self.request), timeout=self.rpc_timeout
        )
        self.gateway_credential = response.gateway_credential
        self.generation = response.generation
        if not self.configured_interval and response.heartbeat_interval_seconds > 0:
            self.interval = response.heartbeat_interval_seconds
        self.registrations += 1
        self.registered.set()
        if response.status == "pending_audit":
            log.info("registered node %s; the coordinator audits it before it is queried", self.request.node_id)
        elif response.status == "quarantined":
            log.warning("registered node %s, but the coordinator keeps it quarantined (its admin can clear it)",
                        self.request.node_id)
        elif response.status != "healthy":
            log.warning(
                "registered, but the coordinator's backbone is %s and this head's is %s: it will not be queried",
                response.backbone.digest[:12], self.request.backbone_digest[:12],
            )
        else:
            log.info(
                "registered node %s (source %s, endpoint %s); heartbeat every %.1fs",
                self.request.node_id, self.request.source, self.request.endpoint, self.interval,
            )

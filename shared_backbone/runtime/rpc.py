"""gRPC plumbing shared by the gateway, the nodes and the client: limits, TLS, auth, health.

Every server of the network is built the same way: `create_server` (thread pool, message-size
limits, token interceptor), `bind` (plaintext or TLS from a `TLSConfig`), and
`enable_health_and_reflection` so standard tools (grpc_health_probe, grpcurl) work on every port.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared_backbone.config import TLSConfig

log = logging.getLogger(__name__)

MB = 1 << 20
AUTHORIZATION = "authorization"
# gRPC metadata keys of the node identity proofs (RegistryService); the same proofs travel in Flower
# records under `flower_messages.*_FIELD`.
PUBLIC_KEY_METADATA = "x-node-public-key"  # RegistryService: the node's Ed25519 public key (hex)
CHALLENGE_METADATA = "x-node-challenge"  # RegistryService: the challenge the signature covers
SIGNATURE_METADATA = "x-node-signature"  # RegistryService: hex signature (shared_backbone/protocol/identity.py)
ENROLMENT_PROOF_METADATA = "x-enrolment-proof"  # RegistryService.Register, first registration of a node id
REFUSAL_LOG_INTERVAL = 60.0  # seconds between WARNING lines about refused tokens
HEALTH_SERVICE = health.SERVICE_NAME
RECONNECT_BACKOFF_MS = 500
MAX_RECONNECT_BACKOFF_MS = 2000


class RpcConfigError(ValueError):
    """A TLS file, token file or address that cannot be used; the message names it."""


def message_options(max_message_mb: int) -> list[tuple[str, int]]:
    size = int(max_message_mb * MB)
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


def channel_options(max_message_mb: int) -> list[tuple[str, int | str]]:
    """Message limits plus short reconnect backoff, so a restarted peer is reachable within seconds."""
    return message_options(max_message_mb) + [
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.enable_retries", 0),
    ]


def read_secret(file: str, what: str) -> str:
    """The first line of a secret file ("" when no file is configured); secrets never come inline."""
    if not file:
        return ""
    try:
        lines = Path(file).read_text().splitlines()
    except OSError as exc:
        raise RpcConfigError(f"{what} {file}: cannot read ({exc.strerror})") from None
    if not lines or not lines[0].strip():
        raise RpcConfigError(f"{what} {file}: empty")
    return lines[0].strip()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (plaintext is allowed there without --insecure)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def target_host(target: str) -> str:
    return target.rpartition(":")[0].strip("[]") if ":" in target else target


def check_plaintext(host: str, tls: TLSConfig | None, insecure: bool, what: str) -> None:
    """Refuses plaintext gRPC off loopback unless the operator said `insecure`."""
    if tls and (tls.cert or tls.ca):
        return
    if not insecure and not is_loopback(host):
        raise RpcConfigError(
            f"{what} {host}: plaintext gRPC off loopback is refused; configure TLS or set insecure (--insecure)"
        )


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RpcConfigError(f"tls.{what} {path}: cannot read ({exc.strerror})") from None


def tls_enabled(tls: TLSConfig | None) -> bool:
    return bool(tls and tls.cert)


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    if not tls.key:
        raise RpcConfigError("tls.key must be set together with tls.cert")
    if tls.require_client_cert and not tls.ca:
        raise RpcConfigError("tls.require_client_cert needs tls.ca to verify client certificates")
    root = _read_pem(tls.ca, "ca") if tls.ca else None
    return grpc.ssl_server_credentials(
        [(_read_pem(tls.key, "key"), _read_pem(tls.cert, "cert"))],
        root_certificates=root,
        require_client_auth=tls.require_client_cert,
    )


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """Trusts `ca` (system roots when empty) and presents cert/key as the client identity."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(tls.ca, "ca") if tls.ca else None,
        private_key=_read_pem(tls.key, "key") if tls.key else None,
        certificate_chain=_read_pem(tls.cert, "cert") if tls.cert else None,
    )


def open_channel(target: str, tls: TLSConfig | None = None, max_message_mb: int = 32) -> grpc.Channel:
    """A channel to `target` (host:port), TLS when `tls.cert` or `tls.ca` is set."""
    return _open(grpc, target, tls, max_message_mb)


def open_aio_channel(target: str, tls: TLSConfig | None = None, max_message_mb: int = 32) -> grpc.aio.Channel:
    """`open_channel` for asyncio (call from the event loop that will use it)."""
    return _open(grpc.aio, target, tls, max_message_mb)


def _open(api, target: str, tls: TLSConfig | None, max_message_mb: int):
    options = channel_options(max_message_mb)
    if tls and (tls.cert or tls.ca):
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        return api.secure_channel(target, channel_credentials(tls), options=options)
    return api.insecure_channel(target, options=options)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a bearer token (empty when there is no token)."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


def metadata_value(context: grpc.ServicerContext, key: str) -> str:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else item.value.decode()
    return ""


class _RefusalLog:
    """Logs refused calls at most once per REFUSAL_LOG_INTERVAL, with a count (no log flooding)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._last = 0.0

    def note(self, method: str, reason: str) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._last < REFUSAL_LOG_INTERVAL and self._last:
                return
            count, self._count, self._last = self._count, 0, now
        log.warning("refused %d call(s) for want of a valid token; latest %s: %s token", count, method, reason)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls to protected services without `authorization: Bearer <token>`.

    `tokens` maps a fully-qualified service name (e.g. `attribution.v1.HeadService`) to its token,
    or to a function returning the current one ("" = refuse every call: no token known yet);
    services not listed (health, reflection) stay open.
    """

    def __init__(self, tokens: dict[str, str | Callable[[], str]]) -> None:
        self.tokens = {service: token for service, token in tokens.items() if token}
        self.refusals = _RefusalLog()

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        service = handler_call_details.method.lstrip("/").rsplit("/", 1)[0]
        expected = self.tokens.get(service)
        if expected is None:
            return continuation(handler_call_details)
        expected = expected() if callable(expected) else expected
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTHORIZATION:
                presented = value if isinstance(value, str) else value.decode(errors="replace")
        if expected and hmac.compare_digest(presented.encode(), f"Bearer {expected}".encode()):
            return continuation(handler_call_details)
        reason = "no token known yet, so" if not expected else "missing" if not presented else "invalid"
        self.refusals.note(handler_call_details.method, reason)
        return _unauthenticated(f"{reason} token for {service} (send 'authorization: Bearer <token>')")


def _unauthenticated(message: str) -> grpc.RpcMethodHandler:
    def abort(request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def create_server(
    *,
    workers: int,
    max_message_mb: int,
    tokens: dict[str, str | Callable[[], str]] | None = None,
    max_concurrent_rpcs: int | None = None,
    interceptors: Iterable[grpc.ServerInterceptor] = (),
) -> grpc.Server:
    """A thread-pool server; past `max_concurrent_rpcs` calls in flight gRPC answers RESOURCE_EXHAUSTED
    at once instead of queueing them without bound. `interceptors` run before the token check."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=message_options(max_message_mb) + [("grpc.so_reuseport", 0)],
        interceptors=[*interceptors, TokenInterceptor(tokens or {})],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


def bind(server: grpc.Server, host: str, port: int, tls: TLSConfig | None = None, *, insecure: bool = False) -> int:
    """Binds host:port (port 0 = any free port); returns the bound port or raises RpcConfigError.

    Plaintext is refused off loopback unless `insecure`.
    """
    check_plaintext(host, tls if tls_enabled(tls) else None, insecure, "listen address")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls_enabled(tls):
            bound = server.add_secure_port(address, server_credentials(tls))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RpcConfigError(f"cannot listen on {address}: {exc}") from None
    if not bound:
        raise RpcConfigError(f"cannot listen on {address} (port in use or address not local)")
    return bound


def enable_health_and_reflection(server: grpc.Server, service_names: Iterable[str]) -> health.HealthServicer:
    """Registers grpc.health.v1 (every service SERVING) and reflection for the given services."""
    names = list(service_names)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *names]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    return servicer


def set_not_serving(servicer: health.HealthServicer) -> None:
    """Flips every status to NOT_SERVING so load balancers drain before shutdown."""
    servicer.enter_graceful_shutdown()


def check_health(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> str:
    """The health status name of `service` on the channel's server (e.g. 'SERVING')."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a server process shuts down cleanly (main thread only)."""
    stop = threading.Event()

    def handler(signum, frame) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop

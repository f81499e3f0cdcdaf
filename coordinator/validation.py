"""The one validator of everything a node says about itself, whichever path it registers by.

`Registry.register` calls `validate_registration` before it stores anything, so the gRPC
`RegistryService` and the Flower head round are checked by the same code: names, endpoint,
digests, a threshold in a sane range and size-capped metrics (the calibration was checked when
the `Registration` was read: a `Calibration` is finite and bounded or does not exist). What comes
out is a normalised `Registration` (metrics reduced to JSON numbers and short strings), so a
stored entry can always be served back by `ListSources`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from shared_backbone.model.rule import RESERVED
from shared_backbone.protocol.registration import InvalidRegistration, Registration

SOURCE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
NODE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
VERSION_PATTERN = re.compile(r"[A-Za-z0-9_.+-]{0,64}")
HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
MIN_THRESHOLD = 0.05  # below this a head claims (almost) every image
MAX_THRESHOLD = 0.999
MAX_METRICS_BYTES = 16 * 1024
MAX_METRICS_DEPTH = 4
MAX_METRIC_STRING = 256
# Never dialled by default: unspecified, link-local (cloud metadata lives here), multicast, reserved.
DEFAULT_DENY = ("0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/128", "fe80::/10", "ff00::/8")


@dataclass(frozen=True)
class EndpointPolicy:
    """Which `host:port` endpoints the gateway will dial.

    `deny`: networks never dialled (default: unspecified, link-local, multicast, reserved).
    `allow`: when not empty, only these networks (CIDR) or host names (exact, or `.suffix`) are.
    Host names are not resolved at registration (that would not stop DNS rebinding): deployments
    that must keep the gateway off internal addresses list what nodes may use in `allow`.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = DEFAULT_DENY
    _deny_nets: tuple = field(default=(), init=False, repr=False, compare=False)
    _allow_nets: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_deny_nets", tuple(ipaddress.ip_network(n, strict=False) for n in self.deny))
            object.__setattr__(self, "_allow_nets", tuple(
                ipaddress.ip_network(n, strict=False) for n in self.allow if _looks_like_network(n)))
        except ValueError as exc:
            raise InvalidRegistration(f"endpoint policy: {exc}") from None

    def problem(self, host: str) -> str | None:
        """Why the gateway must not dial `host` (an IP literal or a host name), or None."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return self._hostname_problem(host)
        if any(address in net for net in self._deny_nets if net.version == address.version):
            return f"address {host} is in a denied network"
        if self.allow and not any(address in net for net in self._allow_nets if net.version == address.version):
            return f"address {host} is not in an allowed network"
        return None

    def _hostname_problem(self, host: str) -> str | None:
        names = [a for a in self.allow if not _looks_like_network(a)]
        if not self.allow or any(host == n or (n.startswith(".") and host.endswith(n)) for n in names):
            return None
        return f"host {host!r} is not an allowed host name"


LOOPBACK_ONLY = ("127.0.0.0/8", "::1/128", "localhost")


def gateway_policy(gateway: Any) -> EndpointPolicy:
    """The endpoint policy of a `GatewayConfig`: a gateway that dials nodes in plaintext dials loopback
    only, unless `insecure` (then `endpoint_allow` / `endpoint_deny` as configured)."""
    allow = tuple(gateway.endpoint_allow)
    plaintext = not (gateway.tls.cert or gateway.tls.ca)
    if plaintext and not gateway.insecure:
        allow = tuple(a for a in allow if a in LOOPBACK_ONLY) or LOOPBACK_ONLY
    return EndpointPolicy(allow=allow, deny=tuple(gateway.endpoint_deny))


def _looks_like_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def check_source(source: Any) -> str:
    """A source name: `[a-z0-9][a-z0-9_-]{0,63}` and not one of the rule's answers (real/unknown/ambiguous)."""
    if not isinstance(source, str) or not SOURCE_PATTERN.fullmatch(source):
        raise InvalidRegistration(f"source {str(source)[:80]!r} must match {SOURCE_PATTERN.pattern}")
    if source in RESERVED:
        raise InvalidRegistration(f"source {source!r} is reserved (the rule answers {', '.join(RESERVED)})")
    return source


def check_node_id(node_id: Any) -> str:
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.fullmatch(node_id):
        raise InvalidRegistration(f"node_id {str(node_id)[:80]!r} must match {NODE_ID_PATTERN.pattern}")
    return node_id


def check_endpoint(endpoint: Any, policy: EndpointPolicy) -> str:
    """`host:port` only (IPv4, [IPv6] or a DNS name; no scheme such as unix:, no path), allowed by `policy`."""
    text = endpoint if isinstance(endpoint, str) else ""
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", text)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise InvalidRegistration(f"endpoint {text[:80]!r} is not host:port (no scheme, no path, port 1-65535)")
    host = match.group(1).strip("[]").lower()
    if not match.group(1).startswith("["):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            labels = host.rstrip(".").split(".")
            if len(host) > 253 or not all(HOSTNAME_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
                raise InvalidRegistration(f"endpoint host {host!r} is neither an IP address nor a DNS name") from None
    else:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidRegistration(f"endpoint host [{host}] is not an IPv6 address") from None
    problem = policy.problem(host)
    if problem:
        raise InvalidRegistration(f"endpoint {text}: {problem}")
    return text


def check_threshold(threshold: Any) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidRegistration(f"threshold {str(threshold)[:40]!r} is not a number") from None
    if not (math.isfinite(value) and MIN_THRESHOLD <= value <= MAX_THRESHOLD):
        raise InvalidRegistration(f"threshold {value} must be in [{MIN_THRESHOLD}, {MAX_THRESHOLD}]")
    return value


def _clean_metric(value: Any, depth: int, where: str) -> Any:
    if depth > MAX_METRICS_DEPTH:
        raise InvalidRegistration(f"metrics: {where} nests deeper than {MAX_METRICS_DEPTH} levels")
    if isinstance(value, Mapping):
        return {str(k)[:MAX_METRIC_STRING]: _clean_metric(v, depth + 1, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_metric(v, depth + 1, f"{where}[]") for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(float(value)) else None
    return str(value)[:MAX_METRIC_STRING]


def check_metrics(metrics: Any) -> dict[str, Any]:
    """JSON numbers, booleans and short strings, at most MAX_METRICS_DEPTH deep and MAX_METRICS_BYTES long."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidRegistration("metrics must be a mapping")
    cleaned = _clean_metric(metrics, 0, "metrics")
    size = len(json.dumps(cleaned, sort_keys=True))
    if size > MAX_METRICS_BYTES:
        raise InvalidRegistration(f"metrics take {size} bytes as JSON; at most {MAX_METRICS_BYTES}")
    return cleaned


def _check_digest(name: str, value: Any) -> str:
    if not isinstance(value, str) or not DIGEST_PATTERN.fullmatch(value):
        raise InvalidRegistration(f"{name} must be 64 lowercase hex digits (a sha256)")
    return value


def validate_registration(registration: Registration, policy: EndpointPolicy) -> Registration:
    """The normalised registration, or InvalidRegistration naming the first field it may not say."""
    version = registration.backbone_version
    if not VERSION_PATTERN.fullmatch(version):
        raise InvalidRegistration(f"backbone_version {version[:80]!r} must match {VERSION_PATTERN.pattern}")
    check_node_id(registration.node_id)
    check_source(registration.source)
    check_endpoint(registration.endpoint, policy)
    _check_digest("backbone_digest", registration.backbone_digest)
    _check_digest("head_digest", registration.head_digest)
    return replace(registration, threshold=check_threshold(registration.threshold),
                   metrics=check_metrics(registration.metrics))

"""The coordinator's server bootstrap: verify the bundle, open the registry, build the gateway's parts,
hand them to the servicers (as in grpc's route_guide), serve."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1.health import HealthServicer

from coordinator.admission import Admission
from coordinator.config import CoordinatorConfig, GatewayConfig
from coordinator.gateway.attribution_service import AttributionServicer
from coordinator.gateway.audit import CanaryAudit, CanaryProber
from coordinator.gateway.canaries import CanaryError, build_pool
from coordinator.gateway.win_rate import WinRateMonitor
from coordinator.gateway.intake import Intake
from coordinator.gateway.node_pool import LatencyBudget, NodePool
from coordinator.gateway.distribution_service import DistributionServicer, distribution_servicer
from coordinator.gateway.registry_service import RegistryServicer
from coordinator.gateway.serving_pipeline import RoutingTable, ServingPipeline
from coordinator.registry import Registry, RegistryError
from coordinator.validation import InvalidRegistration, gateway_policy
from shared_backbone.model import bundle as bundle_lib
from shared_backbone.model import heatmaps, networks
from shared_backbone.model.compiled import CompiledModel
from shared_backbone.model.rule import RuleSettings
from shared_backbone.runtime import rpc
from shared_backbone.runtime.prometheus import MetricsInterceptor, ServerMetrics, serve_metrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ATTRIBUTION_SERVICE = pb.DESCRIPTOR.services_by_name["AttributionService"].full_name
REGISTRY_SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"].full_name
DISTRIBUTION_SERVICE = pb.DESCRIPTOR.services_by_name["DistributionService"].full_name


class GatewayStartError(RuntimeError):
    """The gateway cannot start (bundle, key, token, registry or port); the message says which."""


@dataclass
class CoordinatorServer:
    """A running coordinator server: the gateway's parts, the registry, health + reflection."""

    server: grpc.Server
    port: int
    attribution: AttributionServicer
    pipeline: ServingPipeline
    pool: NodePool
    registry: Registry
    health: HealthServicer
    metrics: ServerMetrics
    metrics_port: int = -1  # the bound /metrics port, -1 when off
    audit: CanaryAudit | None = None
    prober: CanaryProber | None = None
    distribution: DistributionServicer | None = None  # None when gateway.distribution.enabled is off

    def stop(self, grace: float = 2.0) -> None:
        rpc.set_not_serving(self.health)
        if self.prober is not None:
            self.prober.stop()
        self.server.stop(grace).wait(grace + 1)
        close_parts(self.attribution, self.pool)
        self.registry.close()
        self.metrics.close()


def check_gateway_config(config: GatewayConfig) -> None:
    """Refuses settings that would make the gateway misbehave, naming the key."""
    positive = ("max_message_mb", "max_images", "max_pixels", "max_request_pixels", "max_heatmap_images", "node_timeout",
                "node_cooldown_failures", "node_budget_floor", "node_slow_strikes", "heartbeat_interval", "stale_after",
                "max_batch", "max_queue_images", "max_inflight_batches", "request_timeout", "workers", "max_concurrent_rpcs",
                "decode_workers")
    for key in positive:
        if getattr(config, key) <= 0:
            raise GatewayStartError(f"gateway.{key} must be positive, got {getattr(config, key)}")
    for key in ("batch_window_ms", "node_cooldown_seconds", "node_budget_factor", "rate_limit", "rate_burst"):
        if getattr(config, key) < 0:
            raise GatewayStartError(f"gateway.{key} must be >= 0, got {getattr(config, key)}")
    if config.stale_after <= config.heartbeat_interval:
        raise GatewayStartError(
            f"gateway.stale_after ({config.stale_after}) must exceed gateway.heartbeat_interval ({config.heartbeat_interval})"
        )
    rule_settings(config)


def rule_settings(config: GatewayConfig) -> RuleSettings:
    """The rule's knobs from the gateway config; `RuleSettings` is the one place that checks their ranges."""
    try:
        return RuleSettings(config.fake_threshold, config.alpha, config.tie_margin, config.typicality_alpha, config.rank_by)
    except ValueError as exc:
        raise GatewayStartError(f"gateway config (fake_threshold, alpha, tie_margin, typicality_alpha, rank_by): {exc}") from None


def _open(config: CoordinatorConfig) -> tuple[bundle_lib.Bundle, str, Registry]:
    gateway_config = config.gateway
    try:
        bundle = bundle_lib.load_configured_bundle(config.bundle, config.public_key)
        query_token = rpc.read_secret(gateway_config.query_token_file, "gateway.query_token_file")
        rpc.check_plaintext(gateway_config.host, gateway_config.tls, gateway_config.insecure, "gateway.host")
    except (bundle_lib.BundleError, rpc.RpcConfigError) as exc:
        raise GatewayStartError(str(exc)) from None
    audit_on = gateway_config.audit.enabled
    try:
        registry = Registry(config.registry, stale_after=gateway_config.stale_after,
                            policy=gateway_policy(gateway_config), audit=audit_on)
    except (RegistryError, InvalidRegistration) as exc:
        raise GatewayStartError(f"{exc} (gateway.endpoint_allow / endpoint_deny / registry)") from None
    registry.reset_audits()
    return bundle, query_token, registry


def canary_audit(config: CoordinatorConfig, bundle: bundle_lib.Bundle, registry: Registry,
                 metrics: ServerMetrics) -> CanaryAudit | None:
    """The canary audit (`gateway.audit`), None when it is off; its pool needs the reference set."""
    audit = config.gateway.audit
    if not audit.enabled:
        log.warning("canary audits are off (gateway.audit.enabled: false): a node's claims are not checked")
        return None
    if not config.reference:
        raise GatewayStartError("gateway.audit.enabled: canary audits need the reference set (`reference:`, "
                                "see `attribnet coordinator reference`); set gateway.audit.enabled: false to serve without")
    try:
        pool = build_pool(config.reference, audit.reference, bundle.input_spec, reals=audit.reals,
                          own_generators=audit.own_generators, per_source=audit.per_source, seed=audit.seed,
                          private_reals=audit.private_reals)
    except (CanaryError, OSError, ValueError) as exc:
        raise GatewayStartError(f"gateway.audit: {exc}") from None
    return CanaryAudit(registry, pool, audit, metrics, seed=audit.seed)


def build_attribution(bundle: bundle_lib.Bundle, registry: Registry, config: GatewayConfig,
                      metrics: ServerMetrics, audit: CanaryAudit | None = None) -> tuple[AttributionServicer, NodePool]:
    """The AttributionService servicer and its parts: one primary module for the trunk pass and the heatmaps."""
    primary = bundle.load_primary()
    serving = CompiledModel(networks.build_serving_model(primary))
    metrics.watch_traces("serving", lambda: serving.traces)
    pool = NodePool(
        config.tls, config.max_message_mb, metrics=metrics, cooldown_failures=config.node_cooldown_failures,
        cooldown_seconds=config.node_cooldown_seconds, credential=registry.gateway_credential,
        budget=LatencyBudget(config.node_budget_floor, config.node_budget_factor, config.node_slow_strikes),
    )
    pipeline = ServingPipeline(
        serving, RoutingTable(registry, bundle.digest), pool, window=config.batch_window_ms / 1000.0,
        max_batch=config.max_batch, max_queue=config.max_queue_images, max_inflight=config.max_inflight_batches,
        node_timeout=config.node_timeout, metrics=metrics, audit=audit,
    )
    servicer = AttributionServicer(
        backbone=pb.Backbone(version=bundle.version, digest=bundle.digest), registry=registry,
        intake=Intake(config, bundle.input_spec, metrics), pipeline=pipeline,
        heatmapper=heatmaps.HeatmapModel(primary, compile=True), input_mode=bundle.input_spec.mode,
        rule=rule_settings(config), request_timeout=config.request_timeout, metrics=metrics,
        monitor=WinRateMonitor(registry, config.audit, metrics),
    )
    return servicer, pool


def close_parts(attribution: AttributionServicer, pool: NodePool) -> None:
    attribution.pipeline.close()
    pool.close()
    attribution.intake.close()


def _start_prober(attribution: AttributionServicer, config: GatewayConfig) -> CanaryProber | None:
    """Canary-only batches while no client asks or a node waits for its audit."""
    pipeline = attribution.pipeline
    if pipeline.audit is None:
        return None
    prober = CanaryProber(lambda: pipeline.probe(time.monotonic() + config.node_timeout + 1.0),
                          lambda: pipeline.last_batch, pipeline.has_pending, config.audit)
    prober.start()
    return prober


def start_coordinator(config: CoordinatorConfig) -> CoordinatorServer:
    """Verifies the bundle, opens the registry and serves; returns once listening."""
    gateway_config = config.gateway
    check_gateway_config(gateway_config)
    bundle, query_token, registry = _open(config)
    metrics = ServerMetrics()
    try:
        audit = canary_audit(config, bundle, registry, metrics)
    except GatewayStartError:
        registry.close()
        raise
    attribution, pool = build_attribution(bundle, registry, gateway_config, metrics, audit)
    server = rpc.create_server(
        workers=gateway_config.workers,
        max_message_mb=gateway_config.max_message_mb,
        tokens={ATTRIBUTION_SERVICE: query_token},
        max_concurrent_rpcs=gateway_config.max_concurrent_rpcs,
        interceptors=[MetricsInterceptor(metrics, gateway_config.access_log)],
    )
    pb_grpc.add_AttributionServiceServicer_to_server(attribution, server)
    admission = Admission(registry)
    registry_servicer = RegistryServicer(registry, attribution.backbone, gateway_config, admission)
    pb_grpc.add_RegistryServiceServicer_to_server(registry_servicer, server)
    distribution = distribution_servicer(config, bundle, admission)
    if distribution is not None:
        pb_grpc.add_DistributionServiceServicer_to_server(distribution, server)
    health = rpc.enable_health_and_reflection(
        server, [ATTRIBUTION_SERVICE, REGISTRY_SERVICE] + ([DISTRIBUTION_SERVICE] if distribution else []))
    try:
        port = rpc.bind(server, gateway_config.host, gateway_config.port, gateway_config.tls, insecure=gateway_config.insecure)
        metrics_port = serve_metrics(metrics, gateway_config.metrics_host, gateway_config.metrics_port)
    except (rpc.RpcConfigError, GatewayStartError) as exc:
        close_parts(attribution, pool)
        registry.close()
        raise GatewayStartError(str(exc)) from None
    server.start()
    prober = _start_prober(attribution, gateway_config)
    nodes = registry.list()
    log.info(
        "coordinator serving backbone %s (%s) on %s:%d; registry %s holds %d node(s)%s%s",
        bundle.version, bundle.short_digest, gateway_config.host, port, config.registry, len(nodes),
        "; queries need a token" if query_token else "", "; canary audits on" if audit else "",
    )
    return CoordinatorServer(server, port, attribution, attribution.pipeline, pool, registry, health, metrics,
                             metrics_port, audit, prober, distribution)


def serve_forever(config: CoordinatorConfig) -> int:
    """`attribnet coordinator serve`: runs until SIGINT/SIGTERM."""
    stop = rpc.stop_on_signals()
    coordinator = start_coordinator(config)
    while not stop.wait(0.5):
        pass
    coordinator.stop()
    return 0

"""Canary audits: the gateway judges a node by the claims it observed, never by what the node reports.

Every batch the nodes score carries `audit.per_batch` canaries (`canaries.py`: images no node has
received, labelled by the coordinator) shuffled among the clients' images: the same Score call,
the same features, nothing that marks them. Nodes waiting for their first audit (`pending_audit`)
get the same batches (their answers never reach a client), and while no client asks, the prober
sends canary-only batches through the same queue, so a new node is judged within seconds.

A claim is what the node's own registered calibration and threshold call its own (calibrated score
>= threshold; the detector and the node's conformal and typicality references play no part, so no
number a node sends can hide a claim); on another member's canary it counts only where the node
also outranked that member's node (raw scores, as the rule ranks). The node is quarantined until
the admin clears it when the one-sided Wilson lower bound (`audit.confidence`) of its claim rate on
the recent canaries of one kind (`real`, the coordinator's generators, one member's deposited
images; judged once it answered `audit.min_per_kind` of them) exceeds that kind's tolerance, or when it answers a batch with a wrong count or scores that
are not probabilities. A pending node starts serving once it answered `audit.min_canaries` of them
without crossing a bound; one that does not answer usable scores never does. Nothing of this
reaches a client: `ListSources` shows a pending node as `starting`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import stats

from coordinator.config import AuditConfig
from coordinator.gateway.canaries import OWN_GENERATORS, REAL, CanaryPool
from coordinator.registry import NodeEntry, Registry, RegistryError
from shared_backbone.runtime.prometheus import ServerMetrics

log = logging.getLogger(__name__)

PROBE_POLL = 0.2  # seconds between the prober's looks for pending nodes and idleness


def claim_rate_lower_bound(claimed: int, shown: int, confidence: float) -> float:
    """One-sided lower confidence bound of a claim rate (Wilson score interval; 0 when nothing was shown)."""
    if shown == 0:
        return 0.0
    two_sided = 2.0 * confidence - 1.0
    return float(stats.binomtest(claimed, shown).proportion_ci(confidence_level=two_sided, method="wilson").low)


@dataclass
class Evidence:
    """What one registration of a node did with the canaries it was shown (the last `window` per kind)."""

    generation: int
    window: int
    claims: dict[str, collections.deque] = field(default_factory=dict)  # kind -> recent claims (bool)

    def add(self, kind: str, claims: np.ndarray) -> None:
        self.claims.setdefault(kind, collections.deque(maxlen=self.window)).extend(claims.tolist())

    def summary(self) -> str:
        return ", ".join(f"{sum(recent)} of {len(recent)} {kind}" for kind, recent in sorted(self.claims.items()))

    @property
    def shown(self) -> int:
        return sum(len(recent) for recent in self.claims.values())


def claims_of(entry: NodeEntry, labels: np.ndarray, answered: dict[str, np.ndarray],
              called: list[NodeEntry]) -> dict[str, np.ndarray]:
    """Per kind of canary not of the node's source, whether it claimed each: its registered calibration and
    threshold call the image its own (the detector and its conformal and typicality references play no part,
    so no number a node sends can hide a claim); for another member's canary, only where it also outranked
    that member's node by raw score, as the rule ranks (no evidence where that node did not answer)."""
    raw = answered[entry.node_id]
    own_claims = entry.calibration.apply(raw) >= entry.threshold
    owners = {other.source: answered[other.node_id] for other in called
              if other.node_id in answered and other.node_id != entry.node_id}
    claims = {}
    for kind in {str(label) for label in labels} - {entry.source}:
        rows = labels == kind
        if kind in (REAL, OWN_GENERATORS):
            claims[kind] = own_claims[rows]
        elif kind in owners:
            claims[kind] = own_claims[rows] & (raw[rows] > owners[kind][rows])
    return claims


def tolerance_of(kind: str, config: AuditConfig) -> float:
    return {REAL: config.tolerance_real, OWN_GENERATORS: config.tolerance_own_generators}.get(kind, config.tolerance_per_source)


def verdict(evidence: Evidence, config: AuditConfig) -> str | None:
    """Why the node's observed claims show it claiming what is not its own, or None."""
    for kind, recent in sorted(evidence.claims.items()):
        if len(recent) < config.min_per_kind:
            continue  # one claim in one canary bounds the rate at 0.27: too little to judge a node by
        count, tolerance = sum(recent), tolerance_of(kind, config)
        lower = claim_rate_lower_bound(count, len(recent), config.confidence)
        if lower > tolerance:
            return (f"claimed {count} of {len(recent)} canaries of {kind} (rate at least {lower:.2f} with "
                    f"{config.confidence:.0%} confidence > tolerance {tolerance:.2f})")
    return None


class CanaryAudit:
    """Draws the canaries mixed into each batch and judges every node's answers to them."""

    def __init__(self, registry: Registry, pool: CanaryPool, config: AuditConfig, metrics: ServerMetrics,
                 seed: int | None = None) -> None:
        self.registry, self.pool, self.config, self.metrics = registry, pool, config, metrics
        self.rng = np.random.default_rng(seed)
        self.evidence: dict[str, Evidence] = {}
        self.quarantined = 0
        self._lock = threading.Lock()

    def draw(self, probe: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(model inputs, labels) of this batch's canaries: `per_batch`, or for a canary-only batch enough to
        judge a pending node at once (`min_canaries`, at least `per_batch`)."""
        count = max(self.config.per_batch, self.config.min_canaries) if probe else self.config.per_batch
        with self._lock:
            return self.pool.draw(count, self.rng)

    def observe(self, labels: np.ndarray, answered: dict[str, np.ndarray], called: list[NodeEntry],
                invalid: dict[str, str]) -> None:
        """Judges every called node on this batch's canaries (`answered`: node id -> its raw scores of them;
        `invalid`: node id -> why its scores were unusable, which no honest head does: quarantined)."""
        if not len(labels):
            return
        for entry in called:
            if entry.node_id in invalid:
                self._quarantine(entry, f"answered a batch with unusable scores: {invalid[entry.node_id]}")
            elif entry.node_id not in answered:
                self.metrics.canaries.labels(node=entry.node_id, outcome="unanswered").inc(len(labels))
            else:
                try:
                    self._judge(entry, labels, claims_of(entry, labels, answered, called))
                except Exception:  # noqa: BLE001 - an audit must never fail a query
                    log.exception("canary audit: could not judge node %s", entry.node_id)

    def _judge(self, entry: NodeEntry, labels: np.ndarray, claims: dict[str, np.ndarray]) -> None:
        claimed = sum(int(c.sum()) for c in claims.values())
        self.metrics.canaries.labels(node=entry.node_id, outcome="claimed").inc(claimed)
        self.metrics.canaries.labels(node=entry.node_id, outcome="left").inc(sum(len(c) for c in claims.values()) - claimed)
        with self._lock:
            evidence = self.evidence.get(entry.node_id)
            if evidence is None or evidence.generation != entry.generation:
                evidence = self.evidence[entry.node_id] = Evidence(entry.generation, self.config.window)
            for kind, kind_claims in claims.items():
                evidence.add(kind, kind_claims)
            reason = verdict(evidence, self.config)
            passes = not reason and entry.audit_pending and evidence.shown >= self.config.min_canaries
        if reason:
            self._quarantine(entry, reason)
        elif passes:
            log.info("canary audit: node %s (%s) passed on %d canaries (claimed %s)", entry.node_id, entry.source,
                     evidence.shown, evidence.summary())
            try:
                self.registry.passed_audit(entry.node_id, entry.generation)
            except RegistryError:  # removed meanwhile
                pass

    def _quarantine(self, entry: NodeEntry, reason: str) -> None:
        log.warning("canary audit: quarantined node %s (%s): %s", entry.node_id, entry.source, reason)
        with self._lock:
            self.evidence.pop(entry.node_id, None)
        try:
            self.registry.quarantine(entry.node_id, f"canary audit: {reason}")
        except RegistryError:  # removed meanwhile
            return
        self.metrics.node_quarantined.labels(node=entry.node_id, by="canary_audit").inc()
        self.quarantined += 1


class CanaryProber(threading.Thread):
    """While no client asks (or a node waits for its audit), sends canary-only batches through the queue."""

    def __init__(self, submit_probe: Callable[[], Future], last_batch: Callable[[], float],
                 has_pending: Callable[[], bool], config: AuditConfig) -> None:
        super().__init__(name="canary-prober", daemon=True)
        self.submit_probe, self.last_batch, self.has_pending = submit_probe, last_batch, has_pending
        self.config = config
        self.stop_event = threading.Event()
        self.sent = 0

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)

    def run(self) -> None:
        inflight: Future | None = None
        while not self.stop_event.wait(PROBE_POLL):
            if inflight is not None and not inflight.done():
                continue  # one probe at a time: never more than one batch's worth of canaries queued
            idle = time.monotonic() - self.last_batch() >= self.config.interval
            if idle or self.has_pending():
                try:
                    inflight = self.submit_probe()
                    self.sent += 1
                except Exception:  # noqa: BLE001 - a full queue or a closing gateway: try again later
                    log.debug("canary probe not sent", exc_info=True)

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
images; judged once it answered `audit.min_per_kind` of them) exceeds that kind's tolerance, or when
it answers a batch with a wrong count or scores that are not probabilities. A pending node starts
serving once it answered `audit.min_canaries` of them without crossing a bound; one that does not
answer usable scores never does. Nothing of this reaches a client: `ListSources` shows a pending
node as `starting`.

Where its member deposited images of its own source, the gateway also checks the numbers the node
registered against what it observed (`reference_verdict`): the node's calibrated scores on its own
canaries must be exchangeable with its conformal reference, so about q of them fall at or below
the reference's q-quantile. A reference set below the node's real scores (to keep its source in
prediction sets it should leave) leaves too few there: the node is quarantined when an honest
reference would leave so few with probability under `audit.reference_significance` / j^2 at the
j-th check (q = 5%, 25%, 50%; checks at `min_per_kind` own canaries, twice that, ... then once per
`window`), so an honest node's chance of ever being caught stays under 5 x the significance.
Calibration and reference are checked together: the reference is in calibrated units, so a map
changed after the reference was taken fails the same way. A degenerate reference (e.g. all
zeros) is none (`Calibration.has_reference`): the node's answers carry no p-value, as for a head
registered without one, and there is nothing to check.
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
REFERENCE_LEVELS = (0.05, 0.25, 0.5)  # quantiles of a node's conformal reference checked against its own canaries


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
    own: collections.deque = field(init=False)  # calibrated scores of its own source's canaries (the last `window`)
    own_seen: int = 0  # own canaries answered in all
    reference_checks: int = 0  # reference checks made (the j-th tests at significance / j^2)

    def __post_init__(self) -> None:
        self.own = collections.deque(maxlen=self.window)

    def add_own(self, calibrated: np.ndarray, first: int) -> bool:
        """Remembers these own-canary scores; True when a checkpoint of the reference check was reached.

        The check runs at `first`, 2 x `first`, 4 x ... up to the window, then once per `window` new
        ones: a test at every batch would, over a node's life, catch honest references by chance."""
        before, self.own_seen = self.own_seen, self.own_seen + len(calibrated)
        self.own.extend(calibrated.tolist())
        doublings = [first << i for i in range(32) if first << i <= self.window]
        return any(before < mark <= self.own_seen for mark in doublings) or self.own_seen // self.window > before // self.window

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


def own_scores_of(entry: NodeEntry, labels: np.ndarray, answered: dict[str, np.ndarray]) -> np.ndarray:
    """The node's calibrated scores (its registered map) of the canaries of its own source in this batch."""
    return entry.calibration.apply(answered[entry.node_id][labels == entry.source])


def reference_verdict(own: collections.deque | np.ndarray, reference: tuple[float, ...], significance: float,
                      distinct: int | None = None) -> str | None:
    """Why the node's conformal `reference` sits below its observed scores on its own canaries (`own`), or None.

    For own scores exchangeable with a reference of n values, the share at or below its k-th smallest
    value is Beta(k, n+1-k) distributed (ties only add to it, so a saturated honest head is never
    caught), so the count of N own canaries there is beta-binomial; a reference shifted down leaves
    fewer there. The canaries are N views (with replacement) of `distinct` deposited images: they
    weigh as 1 / (1/N + 1/distinct) independent ones."""
    if len(own) < 2 or len(reference) < 2:
        return None
    scores, values = np.asarray(own, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    shown = int(round(1.0 / (1.0 / len(scores) + 1.0 / distinct))) if distinct else len(scores)
    for level in REFERENCE_LEVELS:
        k = max(1, int(np.ceil(level * (len(values) + 1))))
        at_or_below = int((scores <= values[k - 1]).sum())
        count = int(round(at_or_below * shown / len(scores)))
        chance = float(stats.betabinom.cdf(count, shown, k, len(values) + 1 - k))
        if chance < significance:
            return (f"its conformal reference sits below its own canaries: {at_or_below} of {len(scores)} score at or "
                    f"below the reference's {level:.0%} quantile {values[k - 1]:.4f} (an honest reference leaves so few "
                    f"with probability {chance:.1e} < {significance:.1e})")
    return None


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
                    self._judge(entry, labels, claims_of(entry, labels, answered, called),
                                own_scores_of(entry, labels, answered))
                except Exception:  # noqa: BLE001 - an audit must never fail a query
                    log.exception("canary audit: could not judge node %s", entry.node_id)

    def _judge(self, entry: NodeEntry, labels: np.ndarray, claims: dict[str, np.ndarray], own: np.ndarray) -> None:
        claimed = sum(int(c.sum()) for c in claims.values())
        self.metrics.canaries.labels(node=entry.node_id, outcome="claimed").inc(claimed)
        self.metrics.canaries.labels(node=entry.node_id, outcome="left").inc(sum(len(c) for c in claims.values()) - claimed)
        self.metrics.canaries.labels(node=entry.node_id, outcome="own").inc(len(own))
        with self._lock:
            evidence = self.evidence.get(entry.node_id)
            if evidence is None or evidence.generation != entry.generation:
                evidence = self.evidence[entry.node_id] = Evidence(entry.generation, self.config.window)
            for kind, kind_claims in claims.items():
                evidence.add(kind, kind_claims)
            reason = verdict(evidence, self.config)
            if evidence.add_own(own, self.config.min_per_kind) and entry.calibration.has_reference and not reason:
                evidence.reference_checks += 1
                reason = reference_verdict(evidence.own, entry.calibration.positive_scores,
                                           self.config.reference_significance / evidence.reference_checks ** 2,
                                           self.pool.counts.get(entry.source))
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

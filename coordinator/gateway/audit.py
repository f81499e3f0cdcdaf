"""Canary audits and the win-rate monitor: a node that claims what is not its own stops being asked.

The gateway holds canaries: trunk features of reference images whose source it knows (one
sub-folder per source of `gateway.audit.reference`, each image also mirrored, so the exact
feature bytes vary). A node is audited when it registers (it is `pending_audit`, not queried,
until it passes) and every `audit.interval` seconds: it scores a random sample of canaries of
other sources, shuffled with some of its own where the folder has them, through the same
`NodePool` calls as a query. The gateway judges what it observed, never what the node reports
about itself: a node is quarantined until the admin clears it (`attribnet coordinator registry
clear NODE_ID`) when the lower confidence bound (`audit.confidence`, Wilson) of its claim rate
on images that are not its own exceeds `audit.tolerance`, or when it answers with scores that
are not finite or outside [0, 1]. The bound keeps an honest but imperfect head (a few claims in
a small sample) in service while a node that claims most of what it is shown is caught at once.

A node could recognise canaries it has seen before; the win-rate monitor watches live answers
instead: a source that wins more than `audit.max_win_share` of the recent requests (each request
counts once) while several sources answer is flagged for the admin (and quarantined with
`audit.quarantine_on_win_rate`).
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

from coordinator.config import AuditConfig
from coordinator.gateway.node_pool import NodePool
from coordinator.registry import HEALTHY, PENDING_AUDIT, NodeEntry, Registry, RegistryError
from shared_backbone.model import preprocessing
from shared_backbone.model.rule import RuleSettings
from shared_backbone.protocol import wire

log = logging.getLogger(__name__)

PENDING_POLL = 0.5  # seconds between looks for freshly registered nodes
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class Canaries:
    """Trunk features of labelled reference images: `features[i]` is an image of `labels[i]`."""

    features: np.ndarray
    labels: np.ndarray

    def for_source(self, source: str, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(features, is-own) of up to `count` other-source canaries plus up to count/2 own, shuffled."""
        others = np.flatnonzero(self.labels != source)
        own = np.flatnonzero(self.labels == source)
        picked = np.concatenate([
            rng.choice(others, size=min(count, len(others)), replace=False),
            rng.choice(own, size=min(count // 2, len(own)), replace=False),
        ]).astype(int)
        rng.shuffle(picked)
        return self.features[picked], self.labels[picked] == source


def load_canaries(folder: str | Path, spec: preprocessing.InputSpec, trunk_features: Callable[[np.ndarray], np.ndarray],
                  per_source: int) -> Canaries:
    """Reads up to `per_source` images per sub-folder (and their mirror images) through the trunk."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    inputs, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_source]
        for path in images:
            rgb = preprocessing.load_image(path, spec.image_size)
            for view in (rgb, rgb[:, ::-1]):
                inputs.append(preprocessing.to_model_input(np.ascontiguousarray(view), spec))
                labels.append(sub.name)
    if len(set(labels)) < 2:
        raise ValueError(f"{folder} needs images of at least two sources (one sub-folder each)")
    features = np.concatenate([trunk_features(np.stack(inputs[i:i + 64])) for i in range(0, len(inputs), 64)])
    log.info("canary audit: %d reference images of %d sources", len(labels) // 2, len(set(labels)))
    return Canaries(features, np.array(labels))


def claim_rate_lower_bound(claimed: int, shown: int, confidence: float) -> float:
    """One-sided lower confidence bound of a claim rate (Wilson score interval; 0 when nothing was shown)."""
    if shown == 0:
        return 0.0
    two_sided = 2.0 * confidence - 1.0
    return float(stats.binomtest(claimed, shown).proportion_ci(confidence_level=two_sided, method="wilson").low)


def judge(entry: NodeEntry, raw: np.ndarray, own: np.ndarray, tolerance: float, alpha: float,
          confidence: float) -> str | None:
    """Why the node's canary answers show it claiming what is not its own, or None when they do not."""
    if not np.all(np.isfinite(raw)) or np.any((raw < 0.0) | (raw > 1.0)):
        return "answered canaries with scores that are not finite or outside [0, 1]"
    calibrated = entry.calibration.apply(raw)
    claims = calibrated >= entry.threshold
    p_values = entry.calibration.p_values(calibrated)
    if p_values is not None:
        claims &= p_values > alpha
    others = ~own
    claimed, shown = int(claims[others].sum()), int(others.sum())
    lower = claim_rate_lower_bound(claimed, shown, confidence)
    if lower > tolerance:
        return (f"claimed {claimed} of {shown} canary images of other sources "
                f"(rate at least {lower:.2f} with {confidence:.0%} confidence > tolerance {tolerance:.2f})")
    return None


class CanaryAudit(threading.Thread):
    """Audits fresh registrations at once and every node every `interval` seconds."""

    def __init__(self, registry: Registry, pool: NodePool, canaries: Canaries, config: AuditConfig, backbone: str,
                 rule: RuleSettings, seed: int | None = None) -> None:
        super().__init__(name="canary-audit", daemon=True)
        self.registry, self.pool, self.canaries, self.config = registry, pool, canaries, config
        self.backbone, self.rule = backbone, rule
        self.rng = np.random.default_rng(seed)
        self.stop_event = threading.Event()
        self.audits = 0

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=self.config.timeout + 2)

    def run(self) -> None:
        since_full = self.config.interval
        while not self.stop_event.wait(PENDING_POLL):
            since_full += PENDING_POLL
            full = since_full >= self.config.interval
            since_full = 0.0 if full else since_full
            for entry in self.registry.list():
                due = entry.status == PENDING_AUDIT or (full and entry.status == HEALTHY)
                if due and entry.backbone_digest == self.backbone and not self.stop_event.is_set():
                    self.audit(entry)

    def audit(self, entry: NodeEntry) -> str | None:
        """One audit of one node: passes it, quarantines it, or (no answer) leaves it as it was."""
        features, own = self.canaries.for_source(entry.source, self.config.sample, self.rng)
        request = wire.features_to_request(features, self.backbone)
        raw = self.pool.probe(entry, request, len(features), self.config.timeout)
        if raw is None:
            return None
        self.audits += 1
        reason = judge(entry, raw, own, self.config.tolerance, self.rule.alpha, self.config.confidence)
        try:
            if reason:
                log.warning("canary audit: quarantined node %s (%s): %s", entry.node_id, entry.source, reason)
                self.registry.quarantine(entry.node_id, f"canary audit: {reason}")
            elif entry.status == PENDING_AUDIT:
                self.registry.passed_audit(entry.node_id, entry.generation)
        except RegistryError:  # removed meanwhile
            return reason
        return reason


class WinRateMonitor:
    """Flags a source that suddenly wins (almost) every request among several answering sources.

    Each request counts once, its attributions split evenly over the sources they name: a
    fact-checker asking about a folder of one source's images is one request, not hundreds of
    wins. `win_window` and `win_min_answers` therefore count requests. The monitor never raises
    into the query path: a failure is logged and the answer goes out as computed.
    """

    def __init__(self, registry: Registry, config: AuditConfig) -> None:
        self.registry = registry
        self.config = config
        self.recent: collections.deque[dict[str, float]] = collections.deque(maxlen=max(config.win_window, 1))
        self.flagged: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, attributions: list[str], scoring: list[NodeEntry]) -> None:
        """Records one request's answers; flags (once per node) every node over the share."""
        try:
            for node_id, reason in self._over_share(attributions, scoring):
                self._flag(node_id, reason)
        except Exception:  # noqa: BLE001 - a monitor must never fail a query
            log.exception("win-rate monitor: could not record a request (the answers are unaffected)")

    def _over_share(self, attributions: list[str], scoring: list[NodeEntry]) -> list[tuple[str, str]]:
        """(node id, reason) of every not yet flagged node whose share of the recent requests is over the limit."""
        node_of = {entry.source: entry.node_id for entry in scoring}
        named = [node_of[a] for a in attributions if a in node_of]
        with self._lock:
            if named:
                self.recent.append({node: count / len(named) for node, count in collections.Counter(named).items()})
            if len(self.recent) < self.config.win_min_answers or len(node_of) < self.config.win_min_sources:
                return []
            shares: collections.Counter[str] = collections.Counter()
            for request in self.recent:
                shares.update(request)
            total = len(self.recent)
            over = [(node, share) for node, share in shares.items()
                    if share / total > self.config.max_win_share and node not in self.flagged]
            self.flagged.update(node for node, _ in over)
        return [(node, f"won {share:.0f} of the last {total} requests among {len(node_of)} answering sources")
                for node, share in over]

    def _flag(self, node_id: str, reason: str) -> None:
        log.warning("win-rate monitor: node %s %s", node_id, reason)
        try:
            if self.config.quarantine_on_win_rate:
                self.registry.quarantine(node_id, f"win-rate monitor: {reason}")
            else:
                self.registry.flag(node_id, f"win-rate monitor: {reason}")
        except RegistryError:
            pass

"""The win-rate monitor: a source that suddenly wins (almost) every request is flagged for the admin.

A node could try to claim only what the canaries do not look like; the monitor watches the live
answers instead. A source that wins more than `audit.max_win_share` of the recent requests (each
request counts once) while several sources answer is flagged (`registry list`, the metric
`attribnet_node_flagged_total`), or quarantined with `audit.quarantine_on_win_rate`.
"""

from __future__ import annotations

import collections
import logging
import threading

from coordinator.config import AuditConfig
from coordinator.registry import NodeEntry, Registry, RegistryError
from shared_backbone.runtime.prometheus import ServerMetrics

log = logging.getLogger(__name__)


class WinRateMonitor:
    """Flags a source that suddenly wins (almost) every request among several answering sources.

    Each request counts once, its attributions split evenly over the sources they name: a
    fact-checker asking about a folder of one source's images is one request, not hundreds of
    wins. `win_window` and `win_min_answers` therefore count requests. The monitor never raises
    into the query path: a failure is logged and the answer goes out as computed.
    """

    def __init__(self, registry: Registry, config: AuditConfig, metrics: ServerMetrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
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
        if self.metrics is not None:
            self.metrics.node_flagged.labels(node=node_id).inc()
        try:
            if self.config.quarantine_on_win_rate:
                self.registry.quarantine(node_id, f"win-rate monitor: {reason}")
            else:
                self.registry.flag(node_id, f"win-rate monitor: {reason}")
        except RegistryError:
            pass

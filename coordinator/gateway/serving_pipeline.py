"""One batch end to end: concurrent requests share one trunk run and one Score call per node.

`ServingPipeline` queues each request's preprocessed inputs in a `MicroBatcher` (bounded wait,
bounded batch, bounded queue, deadlines honoured). Its worker runs the compiled serving model
once per micro-batch, sends the batch's float16 features to every healthy node once
(`NodePool.score`, per-node deadlines, cool-down) and goes on to the next batch while the nodes
work, up to `max_inflight` batches at the nodes; requests arriving meanwhile form the next batch.
When the last node has answered or failed, each request gets its slice (`BatchAnswer`).
`RoutingTable` is the registry as the gateway serves it: the nodes on its backbone, from the
registry's in-memory snapshot (whose calibrations were parsed once, when it was read).

With canary audits on (`audit.py`), every batch also carries the audit's canaries, shuffled among
the clients' rows in the one Score call each node gets, and nodes waiting for their audit are
called too; their answers and the canaries' rows go to the audit, never to a client.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from coordinator.gateway.audit import CanaryAudit
from coordinator.gateway.node_pool import FanoutResult, NodePool
from coordinator.registry import HEALTHY, LEFT, PENDING_AUDIT, STARTING_REASON, NodeEntry, Registry, describe_status
from shared_backbone.model.compiled import CompiledModel
from shared_backbone.model.features import as_head_features
from shared_backbone.protocol import wire
from shared_backbone.runtime.prometheus import STAGE_NODES, STAGE_QUEUE, STAGE_TRUNK, ServerMetrics
from shared_backbone.runtime.batching import BatchItem, MicroBatcher, concatenate, split

# Of the time a batch's earliest request has left, the share kept for the answer's way back after
# the nodes' deadline (at least MIN_MARGIN seconds): a loaded machine needs more than a fixed 50 ms.
COOLING = "skipped for a cool-down after failing or answering late repeatedly"
NO_ANSWER = "did not answer in time or answered wrongly"
DEADLINE_MARGIN = 0.1
MIN_MARGIN = 0.05
MIN_NODE_TIMEOUT = 0.01


@dataclass
class BatchAnswer:
    """One request's share of a batch: fake scores, raw scores per answering node, who is missing."""

    fake_scores: np.ndarray
    raw: dict[str, np.ndarray]  # node id -> this request's raw scores
    nodes: list[NodeEntry]  # the nodes that answered, in registry order
    missing: dict[str, str]  # node id -> why it did not contribute
    typicality: dict[str, np.ndarray] = field(default_factory=dict)  # node id -> typicality (nodes that sent it)


class RoutingTable:
    """Nodes on the gateway's backbone, from the registry's in-memory snapshot."""

    def __init__(self, registry: Registry, backbone_digest: str) -> None:
        self.registry = registry
        self.backbone_digest = backbone_digest
        self._snapshot: tuple[NodeEntry, ...] | None = None
        self._compatible: list[NodeEntry] = []

    def current(self) -> tuple[list[NodeEntry], list[NodeEntry], dict[str, str]]:
        """(healthy nodes, nodes pending their audit, {node id: why it is not queried}) right now; incompatible
        nodes and nodes that left are in none."""
        snapshot = self.registry.snapshot()
        if snapshot is not self._snapshot:
            self._compatible = [entry for entry in snapshot if entry.backbone_digest == self.backbone_digest]
            self._snapshot = snapshot
        now = self.registry.clock()
        healthy, pending, unavailable = [], [], {}
        for entry in self._compatible:
            status = self.registry.status_at(entry, now)
            if status == HEALTHY:
                healthy.append(entry)
            elif status == PENDING_AUDIT:
                unavailable[entry.node_id] = STARTING_REASON  # clients never learn who is being audited
                pending.append(entry)
            elif status != LEFT:
                unavailable[entry.node_id] = describe_status(status, entry)
        return healthy, pending, unavailable


class ServingPipeline:
    """Micro-batches requests through the trunk and the nodes; `submit` returns a future of `BatchAnswer`."""

    def __init__(
        self, serving: CompiledModel, routing: RoutingTable, pool: NodePool, *, window: float, max_batch: int,
        max_queue: int, max_inflight: int, node_timeout: float, metrics: ServerMetrics, audit: CanaryAudit | None = None,
    ) -> None:
        self.serving = serving
        self.audit = audit
        self.last_batch = time.monotonic()  # when the last batch started (the canary prober's idleness)
        self._shuffle = np.random.default_rng()
        self.routing = routing
        self.pool = pool
        self.node_timeout = node_timeout
        self._queue_seconds = metrics.stage(STAGE_QUEUE)
        self._trunk_seconds = metrics.stage(STAGE_TRUNK)
        self._nodes_seconds = metrics.stage(STAGE_NODES)
        self.batcher = MicroBatcher(
            self._run, name="trunk-batcher", window=window, max_batch=max_batch, max_queue=max_queue,
            max_inflight=max_inflight, on_batch=metrics.batch_observer(STAGE_TRUNK), on_depth=metrics.depth_setter(STAGE_TRUNK),
        )

    def probe(self, deadline: float) -> Future:
        """Queues a batch with no client rows: only the audit's canaries (sent while no client asks)."""
        return self.batcher.submit(np.empty((0, *self.audit.pool.input_shape), np.float32), deadline)

    def has_pending(self) -> bool:
        """Whether a node on this backbone waits for its audit."""
        return bool(self.routing.current()[1])

    @property
    def runs(self) -> int:
        """Trunk runs so far (each one also made at most one Score call per node)."""
        return self.batcher.runs

    def close(self) -> None:
        self.batcher.close()

    def _run(self, items: list[BatchItem]) -> None:
        started = self.last_batch = time.monotonic()
        for item in items:
            self._queue_seconds(started - item.enqueued)
        inputs = concatenate(items)
        labels = np.empty(0, dtype=str)
        if self.audit is not None:
            canaries, labels = self.audit.draw(probe=not len(inputs))
            inputs = np.concatenate([inputs, canaries])
        fake, features = self.serving(inputs)
        fake = fake.reshape(-1).astype(np.float64)
        self._trunk_seconds(time.monotonic() - started)
        healthy, pending, unavailable = self.routing.current()
        calls, cooled = self.pool.cooling(healthy + (pending if self.audit is not None else []))
        left = min(item.deadline for item in items) - time.monotonic()
        timeout = max(min(self.node_timeout, left - max(MIN_MARGIN, DEADLINE_MARGIN * left)), MIN_NODE_TIMEOUT)
        order = self._shuffle.permutation(len(inputs))  # canaries anywhere among the clients' rows
        request = wire.features_to_request(as_head_features(features)[order], self.routing.backbone_digest)
        sent = time.monotonic()

        def finish(result: FanoutResult) -> None:
            self._nodes_seconds(time.monotonic() - sent)
            result = result.rows(np.argsort(order))  # back in batch order: the nodes scored the rows in `order`
            queries = len(inputs) - len(labels)
            if self.audit is not None:
                self.audit.observe(labels, result.tail(queries).answered, calls, result.invalid)
            self._finish(items, fake[:queries], healthy, {**unavailable, **{node: COOLING for node in cooled}},
                         result.head(queries))

        self.pool.score(calls, request, len(inputs), timeout, finish)

    @staticmethod
    def _finish(items: list[BatchItem], fake: np.ndarray, healthy: list[NodeEntry], missing: dict[str, str],
                result: FanoutResult) -> None:
        """Hands every request its slice once all nodes have answered or failed (pending nodes' answers go to none)."""
        answered = [entry for entry in healthy if entry.node_id in result.answered]
        served = {entry.node_id for entry in healthy}
        missing = {**missing, **{node: result.reasons.get(node, NO_ANSWER) for node in result.failed & served}}
        ids = [entry.node_id for entry in answered]
        typical = [i for i in ids if i in result.typicality]
        parts = split(items, fake, *(result.answered[i] for i in ids), *(result.typicality[i] for i in typical))
        for item, (fake_part, *rest) in zip(items, parts):
            raw_parts, typical_parts = rest[: len(ids)], rest[len(ids):]
            item.future.set_result(BatchAnswer(fake_part, dict(zip(ids, raw_parts)), answered, missing,
                                               dict(zip(typical, typical_parts))))

"""gRPC channels to the nodes' HeadServices: one Score call per node per batch, in parallel, answers checked.

`NodePool.score` starts every node's call at once, each under its own deadline, and calls back
once all have answered or failed; it never blocks the caller, so the gateway's trunk computes the
next batch meanwhile. A node whose answer is wrong (count, source, head digest, a score that is
not a finite number in [0, 1]) counts as failed, exactly like one that is down or too slow.

Cool-down: after `cooldown_failures` failed calls in a row a node sits out `cooldown_seconds`
(listed missing, not dialled), so a hung node costs one deadline per cool-down, not one per
query; then one batch probes it again. A re-registration (new endpoint or generation) clears it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np

from coordinator.registry import NodeEntry
from shared_backbone.config import TLSConfig
from shared_backbone.protocol import rpc
from shared_backbone.protocol.metrics import ServerMetrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

@dataclass
class _Node:
    """A node's channel and its recent record, for one (node id, endpoint, generation)."""

    key: tuple[str, str, int]
    channel: grpc.Channel
    stub: pb_grpc.HeadServiceStub
    failures: int = 0
    cooled_until: float = 0.0
    ok: bool = True


@dataclass
class FanoutResult:
    """Raw scores per node id from every node that answered correctly in time; the ids that did not."""

    answered: dict[str, np.ndarray] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


class NodePool:
    """gRPC channels to the nodes, renewed when a node re-registers (new endpoint or restart)."""

    def __init__(
        self, tls: TLSConfig, max_message_mb: int, *, metrics: ServerMetrics, cooldown_failures: int = 3,
        cooldown_seconds: float = 5.0,
    ) -> None:
        self.tls = tls
        self.max_message_mb = max_message_mb
        self.metrics = metrics
        self.cooldown_failures = cooldown_failures
        self.cooldown_seconds = cooldown_seconds
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()

    def _node(self, entry: NodeEntry) -> _Node:
        key = (entry.node_id, entry.endpoint, entry.generation)
        with self._lock:
            current = self._nodes.get(entry.node_id)
            if current is None or current.key != key:
                if current is not None:
                    current.channel.close()
                channel = rpc.open_channel(entry.endpoint, self.tls, self.max_message_mb)
                current = _Node(key, channel, pb_grpc.HeadServiceStub(channel))
                self._nodes[entry.node_id] = current
            return current

    def cooling(self, entries: list[NodeEntry]) -> tuple[list[NodeEntry], set[str]]:
        """(nodes to call, ids sitting out a cool-down) among `entries`."""
        now = time.monotonic()
        call, skipped = [], set()
        for entry in entries:
            if self._node(entry).cooled_until > now:
                skipped.add(entry.node_id)
                self.metrics.node_skipped.labels(node=entry.node_id).inc()
            else:
                call.append(entry)
        return call, skipped

    def score(
        self, entries: list[NodeEntry], request: pb.ScoreRequest, rows: int, timeout: float,
        done: Callable[[FanoutResult], None],
    ) -> None:
        """Sends `request` to every node at once; `done(result)` runs once every call has ended."""
        result = FanoutResult()
        if not entries:
            done(result)
            return
        pending = [len(entries)]
        lock = threading.Lock()
        start = time.perf_counter()

        def finished(entry: NodeEntry, call: grpc.Future) -> None:
            scores = None
            try:
                scores = self._outcome(entry, call, rows, time.perf_counter() - start)
            finally:  # whatever happens, the batch completes once every call has ended
                with lock:
                    if scores is None:
                        result.failed.add(entry.node_id)
                    else:
                        result.answered[entry.node_id] = scores
                    pending[0] -= 1
                    last = pending[0] == 0
                if last:
                    done(result)

        for entry in entries:
            call = self._node(entry).stub.Score.future(request, timeout=timeout)
            call.add_done_callback(lambda call, entry=entry: finished(entry, call))

    def _outcome(self, entry: NodeEntry, call: grpc.Future, rows: int, seconds: float) -> np.ndarray | None:
        """The node's checked raw scores, or None (and the failure noted) when it did not answer well."""
        reason, problem, scores = "", None, None
        try:
            response = call.result()
            scores = np.asarray(response.raw_scores, dtype=np.float64)
            problem = check_response(entry, response, scores, rows)
            if problem:
                reason, scores = "bad_answer", None
        except grpc.RpcError as exc:
            code = exc.code()
            problem, reason = f"{code.name}: {exc.details()}", code.name.lower()
        self.metrics.node_latency.labels(node=entry.node_id).observe(seconds)
        if reason == "deadline_exceeded":
            self.metrics.node_timeouts.labels(node=entry.node_id).inc()
        elif reason:
            self.metrics.node_errors.labels(node=entry.node_id, reason=reason).inc()
        self._note(entry, problem)
        return scores

    def _note(self, entry: NodeEntry, problem: str | None) -> None:
        """Tracks failures in a row (cool-down) and logs transitions between answering and failing."""
        node = self._node(entry)
        with self._lock:
            was_ok = node.ok
            node.ok = problem is None
            node.failures = 0 if problem is None else node.failures + 1
            cool = problem is not None and node.failures >= self.cooldown_failures
            if cool:
                node.cooled_until = time.monotonic() + self.cooldown_seconds
                node.failures = self.cooldown_failures - 1  # one more failure after the probe cools it again
        if problem and was_ok:
            log.warning("node %s (%s at %s) did not answer: %s", entry.node_id, entry.source, entry.endpoint, problem)
        elif not problem and not was_ok:
            log.info("node %s (%s) answers again", entry.node_id, entry.source)
        if cool:
            log.warning("node %s failed %d times in a row: skipped for %.1fs", entry.node_id, self.cooldown_failures,
                        self.cooldown_seconds)

    def close(self) -> None:
        with self._lock:
            for node in self._nodes.values():
                node.channel.close()
            self._nodes.clear()


def check_response(entry: NodeEntry, response: pb.ScoreResponse, scores: np.ndarray, rows: int) -> str | None:
    """Why a node's answer cannot be used (wrong count, source, head, or score values), or None."""
    if len(scores) != rows:
        return f"returned {len(scores)} scores for {rows} images"
    if response.source != entry.source or response.head_digest != entry.head_digest:
        return f"serves {response.source}/{response.head_digest[:12]}, registered {entry.source}/{entry.head_digest[:12]}"
    bad = ~(np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0))
    if bad.any():
        return f"returned the raw score {scores[bad][0]}, not a probability in [0, 1]"
    return None

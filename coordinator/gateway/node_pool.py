"""gRPC channels to the nodes' HeadServices: one Score call per node per batch, in parallel, answers checked.

`NodePool.score` starts every node's call at once, each under its own deadline, and calls back
once all have answered or failed; it never blocks the caller, so the gateway's trunk computes the
next batch meanwhile. The calls run on one asyncio event loop (grpc.aio) in a thread of the pool:
measured, a sync-API `future()` per node cost more gateway CPU than the head it waits for. A node whose answer is wrong (count, source, head digest, a score that is
not a finite number in [0, 1], typicality scores that are not finite or not one per image)
counts as failed, exactly like one that is down or too slow. A node that sends no typicality
scores is fine: it just has none.

Cool-down: after `cooldown_failures` failed calls in a row a node sits out `cooldown_seconds`
(listed missing, not dialled), so a hung node costs one deadline per cool-down, not one per
query; then one batch probes it again. A re-registration (new endpoint or generation) clears it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np

from coordinator.registry import NodeEntry
from shared_backbone.config import TLSConfig
from shared_backbone.runtime import rpc
from shared_backbone.runtime.prometheus import ServerMetrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

@dataclass
class _Node:
    """A node's record for one (node id, endpoint, generation), and its channel (loop thread only)."""

    key: tuple[str, str, int]
    stub: pb_grpc.HeadServiceStub | None = None
    channel: grpc.aio.Channel | None = None
    failures: int = 0
    cooled_until: float = 0.0
    ok: bool = True


@dataclass
class FanoutResult:
    """Raw scores per node id from every node that answered correctly in time; the ids that did not."""

    answered: dict[str, np.ndarray] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    typicality: dict[str, np.ndarray] = field(default_factory=dict)  # node id -> typicality, for nodes that sent it


class NodePool:
    """Channels to the nodes on one event loop, renewed when a node re-registers (new endpoint or restart)."""

    def __init__(
        self, tls: TLSConfig, max_message_mb: int, *, metrics: ServerMetrics, cooldown_failures: int = 3,
        cooldown_seconds: float = 5.0, credential: Callable[[str], str] | None = None,
    ) -> None:
        self.tls = tls
        self.max_message_mb = max_message_mb
        self.metrics = metrics
        self.credential = credential  # node id -> the bearer its HeadService accepts (the gateway's credential)
        self.cooldown_failures = cooldown_failures
        self.cooldown_seconds = cooldown_seconds
        self._nodes: dict[str, _Node] = {}
        self._retired: list[grpc.aio.Channel] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="node-fanout", daemon=True)
        self._thread.start()

    def _node(self, entry: NodeEntry) -> _Node:
        key = (entry.node_id, entry.endpoint, entry.generation)
        with self._lock:
            current = self._nodes.get(entry.node_id)
            if current is None or current.key != key:
                if current is not None and current.channel is not None:
                    self._retired.append(current.channel)
                current = _Node(key)
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
        """Sends `request` to every node at once; `done(result)` runs (in the loop's thread) once every call ended."""
        asyncio.run_coroutine_threadsafe(self._score(entries, request, rows, timeout, done), self._loop)

    async def _score(self, entries: list[NodeEntry], request: pb.ScoreRequest, rows: int, timeout: float,
                     done: Callable[[FanoutResult], None]) -> None:
        result = FanoutResult()
        try:
            for channel in self._retired:
                await channel.close()
            self._retired.clear()
            outcomes = await asyncio.gather(*(self._call(entry, request, rows, timeout) for entry in entries))
            for entry, outcome in zip(entries, outcomes):
                if outcome is None:
                    result.failed.add(entry.node_id)
                    continue
                result.answered[entry.node_id], typicality = outcome
                if typicality is not None:
                    result.typicality[entry.node_id] = typicality
        except Exception:  # noqa: BLE001 - the batch must complete whatever happens
            log.exception("fan-out to %d node(s) failed", len(entries))
            result.failed.update(entry.node_id for entry in entries)
            result.answered.clear()
            result.typicality.clear()
        finally:
            done(result)

    def metadata(self, entry: NodeEntry) -> tuple[tuple[str, str], ...]:
        return rpc.bearer(self.credential(entry.node_id)) if self.credential else ()

    def _stub(self, entry: NodeEntry) -> tuple[_Node, pb_grpc.HeadServiceStub]:
        node = self._node(entry)
        if node.stub is None:
            node.channel = rpc.open_aio_channel(entry.endpoint, self.tls, self.max_message_mb)
            node.stub = pb_grpc.HeadServiceStub(node.channel)
        return node, node.stub

    def probe(self, entry: NodeEntry, request: pb.ScoreRequest, rows: int, timeout: float) -> np.ndarray | None:
        """One node's raw answer to an audit batch, its values unchecked so the auditor can judge them;
        None when it did not answer in time, or answered for another head or batch size."""
        future = asyncio.run_coroutine_threadsafe(self._probe(entry, request, rows, timeout), self._loop)
        return future.result(timeout + 5.0)

    async def _probe(self, entry: NodeEntry, request: pb.ScoreRequest, rows: int, timeout: float) -> np.ndarray | None:
        _, stub = self._stub(entry)
        try:
            response = await stub.Score(request, timeout=timeout, metadata=self.metadata(entry))
        except grpc.aio.AioRpcError:
            return None
        if len(response.raw_scores) != rows or response.source != entry.source or response.head_digest != entry.head_digest:
            return None
        return np.asarray(response.raw_scores, dtype=np.float64)

    async def _call(self, entry: NodeEntry, request: pb.ScoreRequest, rows: int,
                    timeout: float) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The node's checked (raw scores, typicality or None), or None (and the failure noted) when it did not answer well."""
        node, stub = self._stub(entry)
        start = time.perf_counter()
        reason, problem, answer = "", None, None
        try:
            response = await stub.Score(request, timeout=timeout, metadata=self.metadata(entry))
            scores = np.asarray(response.raw_scores, dtype=np.float64)
            typicality = np.asarray(response.typicality, dtype=np.float64) if len(response.typicality) else None
            problem = check_response(entry, response, scores, rows) or check_typicality(typicality, rows)
            if problem:
                reason = "bad_answer"
            else:
                answer = (scores, typicality)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            problem, reason = f"{code.name}: {exc.details()}", code.name.lower()
        self.metrics.node_latency.labels(node=entry.node_id).observe(time.perf_counter() - start)
        if reason == "deadline_exceeded":
            self.metrics.node_timeouts.labels(node=entry.node_id).inc()
        elif reason:
            self.metrics.node_errors.labels(node=entry.node_id, reason=reason).inc()
        self._note(entry, node, problem)
        return answer

    def _note(self, entry: NodeEntry, node: _Node, problem: str | None) -> None:
        """Tracks failures in a row (cool-down) and logs transitions between answering and failing."""
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
        async def shutdown() -> None:
            channels = [node.channel for node in self._nodes.values() if node.channel is not None] + self._retired
            for channel in channels:
                await channel.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing node channels failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
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


def check_typicality(typicality: np.ndarray | None, rows: int) -> str | None:
    """Why a node's typicality scores cannot be used (wrong count, not finite), or None (also when it sent none)."""
    if typicality is None:
        return None
    if len(typicality) != rows:
        return f"returned {len(typicality)} typicality scores for {rows} images"
    bad = ~np.isfinite(typicality)
    if bad.any():
        return f"returned the typicality score {typicality[bad][0]}, not a finite number"
    return None

"""gRPC channels to the nodes' HeadServices: one Score call per node per batch, in parallel, answers checked.

`NodePool.score` starts every node's call at once, each under its own deadline, and calls back
once the answers are in (see the latency budget below); it never blocks the caller, so the
gateway's trunk computes the next batch meanwhile. The calls run on one asyncio event loop
(grpc.aio) in a thread of the pool: measured, a sync-API `future()` per node cost more gateway
CPU than the head it waits for. A node whose answer is wrong (count, source, head digest, a score that is
not a finite number in [0, 1], typicality scores that are not finite or not one per image)
counts as failed, exactly like one that is down or too slow. A node that sends no typicality
scores is fine: it just has none.

Latency budget (`gateway.node_budget_floor`, `node_budget_factor`, `node_slow_strikes`): no node
holds a batch up much longer than the healthy ones take. Once a quorum of the called nodes has
answered correctly (a majority, but at most all but one: 1 of 2, 2 of 3, 3 of 4, 9 of 16), the
rest get `max(floor, factor x the quorum's time)` more; a call still out then is cancelled, its
node listed missing ("slower than the latency budget", `attribnet_node_slow_total`). A majority
sets the pace so that a minority of slow or hostile nodes cannot stretch it; "all but one" makes
one slow member of a two-node network cuttable too. One node alone has nothing to compare with:
it keeps the node deadline. The floor (0.25 s: ~20x an honest Score call's p99 on loopback, far
above a GC pause or a first run at a new batch size, which costs a compiled head ~1-6 ms, it never
retraces) keeps honest nodes from being cut by noise; the factor lets the budget grow when every
node is slow (a loaded gateway). Late calls that overlapped each other (batches in flight together
during one stall) count as one strike, so a single spike never adds up to a cool-down.

Cool-down: after `cooldown_failures` failed calls, or `slow_strikes` late ones, in a row a node
sits out `cooldown_seconds` (listed missing, not dialled), so a hung or slow node costs a few
requests, not one per query. Then one batch probes it, and a probe never holds a request once a
quorum answered: it is judged in the background against that batch's budget (in time: the node
is back; late or failed: cooled again at once). A re-registration (new endpoint or generation)
clears it.
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

SLOW = "slower than the latency budget"
PROBING = "probed after a cool-down: not waited for beyond the quorum"

@dataclass
class _Node:
    """A node's record for one (node id, endpoint, generation), and its channel (loop thread only)."""

    key: tuple[str, str, int]
    stub: pb_grpc.HeadServiceStub | None = None
    channel: grpc.aio.Channel | None = None
    failures: int = 0
    strikes: int = 0  # answers later than the latency budget in a row
    last_strike: float = 0.0  # time.monotonic() of the last one: calls sent before it overlapped the same stall
    cooled_until: float = 0.0  # 0: not cooled; past: the next batch probes it
    probing: bool = False
    ok: bool = True


@dataclass
class LatencyBudget:
    """How long the rest of the nodes get once a quorum answered, and how many late answers cool a node."""

    floor: float = 0.25
    factor: float = 2.0
    strikes: int = 2

    @staticmethod
    def quorum(called: int) -> int:
        """Correct answers that set the pace: a majority, at most all but one (one node alone: itself)."""
        return max(1, min(called - 1, called // 2 + 1))

    def allowance(self, quorum_seconds: float) -> float:
        return max(self.floor, self.factor * quorum_seconds)


@dataclass
class _Call:
    """One node's Score call of one batch."""

    entry: NodeEntry
    node: _Node
    probe: bool  # the first call after a cool-down: never holds the batch once a quorum answered
    sent: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None
    invalid: str = ""  # why its scores were unusable (count or values), for the canary audit


@dataclass
class FanoutResult:
    """Raw scores per node id from every node that answered correctly in time; the ids that did not."""

    answered: dict[str, np.ndarray] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    typicality: dict[str, np.ndarray] = field(default_factory=dict)  # node id -> typicality, for nodes that sent it
    reasons: dict[str, str] = field(default_factory=dict)  # failed node id -> why, where more is known than "failed"
    invalid: dict[str, str] = field(default_factory=dict)  # node id -> why its scores were unusable (count, values)

    def head(self, rows: int) -> FanoutResult:
        """The answers to the batch's first `rows` rows (the clients'; the audit's canaries follow them)."""
        return self.rows(slice(None, rows))

    def tail(self, rows: int) -> FanoutResult:
        """The answers to the rows after the first `rows` (the audit's canaries)."""
        return self.rows(slice(rows, None))

    def rows(self, rows: slice | np.ndarray) -> FanoutResult:
        """The answers to these rows (a slice, or an index array that reorders them)."""
        return FanoutResult({node: raw[rows] for node, raw in self.answered.items()}, self.failed,
                            {node: typical[rows] for node, typical in self.typicality.items()}, self.reasons, self.invalid)


class NodePool:
    """Channels to the nodes on one event loop, renewed when a node re-registers (new endpoint or restart)."""

    def __init__(
        self, tls: TLSConfig, max_message_mb: int, *, metrics: ServerMetrics, cooldown_failures: int = 3,
        cooldown_seconds: float = 5.0, credential: Callable[[str], str] | None = None,
        budget: LatencyBudget | None = None,
    ) -> None:
        self.tls = tls
        self.max_message_mb = max_message_mb
        self.metrics = metrics
        self.credential = credential  # node id -> the bearer its HeadService accepts (the gateway's credential)
        self.cooldown_failures = cooldown_failures
        self.cooldown_seconds = cooldown_seconds
        self.budget = budget or LatencyBudget()
        self._nodes: dict[str, _Node] = {}
        self._retired: list[grpc.aio.Channel] = []
        self._background: set[asyncio.Task] = set()  # probes still being judged after their batch was answered
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
        """(nodes to call, ids sitting out a cool-down) among `entries`; a node whose cool-down is over is
        called as a probe, and skipped by other batches until the probe is judged (or another cool-down passed)."""
        now = time.monotonic()
        call, skipped = [], set()
        for entry in entries:
            node = self._node(entry)
            with self._lock:
                cooled = node.cooled_until > now
                if node.cooled_until and not cooled:
                    node.probing, node.cooled_until = True, now + self.cooldown_seconds
            if cooled:
                skipped.add(entry.node_id)
                self.metrics.node_skipped.labels(node=entry.node_id).inc()
            else:
                call.append(entry)
        return call, skipped

    def score(
        self, entries: list[NodeEntry], request: pb.ScoreRequest, rows: int, timeout: float,
        done: Callable[[FanoutResult], None],
    ) -> None:
        """Sends `request` to every node at once; `done(result)` runs (in the loop's thread) once every call ended
        or the latency budget ran out."""
        asyncio.run_coroutine_threadsafe(self._score(entries, request, rows, timeout, done), self._loop)

    async def _score(self, entries: list[NodeEntry], request: pb.ScoreRequest, rows: int, timeout: float,
                     done: Callable[[FanoutResult], None]) -> None:
        result = FanoutResult()
        calls: list[_Call] = []
        try:
            for channel in self._retired:
                await channel.close()
            self._retired.clear()
            for entry in entries:
                node = self._node(entry)
                calls.append(_Call(entry, node, node.probing))
                calls[-1].task = asyncio.ensure_future(self._call(calls[-1], request, rows, timeout))
            cutoff = await self._wait(calls)
            for call in calls:
                self._collect(call, cutoff, result)
        except Exception:  # noqa: BLE001 - the batch must complete whatever happens
            log.exception("fan-out to %d node(s) failed", len(entries))
            for call in calls:
                if call.task is not None:
                    call.task.cancel()
            result.failed.update(entry.node_id for entry in entries)
            result.answered.clear()
            result.typicality.clear()
        finally:
            done(result)

    async def _wait(self, calls: list[_Call]) -> float | None:
        """Waits until every call ended, or until a quorum answered correctly and the rest's budget ran out
        (probes are not waited for then); returns that cutoff (loop time), or None when no quorum answered."""
        loop = asyncio.get_running_loop()
        started, quorum = loop.time(), self.budget.quorum(len(calls))
        pending = {call.task for call in calls}
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if sum(call.task.done() and call.task.result() is not None for call in calls) >= quorum:
                cutoff = loop.time() + self.budget.allowance(loop.time() - started)
                waited = {call.task for call in calls if not call.probe and not call.task.done()}
                if waited:
                    await asyncio.wait(waited, timeout=cutoff - loop.time())
                return cutoff
        return None

    def _collect(self, call: _Call, cutoff: float | None, result: FanoutResult) -> None:
        """Puts one call's outcome into `result`: its answer, or why it is missing (a pending probe is judged later)."""
        node_id = call.entry.node_id
        if not call.task.done():
            if call.probe:
                result.failed.add(node_id)
                result.reasons[node_id] = PROBING
                judge = asyncio.ensure_future(self._judge_probe(call, cutoff))
                self._background.add(judge)
                judge.add_done_callback(self._background.discard)
            else:
                self._late(call)
                result.failed.add(node_id)
                result.reasons[node_id] = SLOW
            return
        outcome = call.task.result()
        if outcome is None:
            result.failed.add(node_id)
            if call.invalid:
                result.invalid[node_id] = call.invalid
            return
        result.answered[node_id], typicality = outcome
        if typicality is not None:
            result.typicality[node_id] = typicality

    async def _judge_probe(self, call: _Call, cutoff: float | None) -> None:
        """A probe still out when its batch was answered: late once its batch's budget ran out (no quorum: its deadline)."""
        timeout = None if cutoff is None else max(0.0, cutoff - asyncio.get_running_loop().time())
        finished, _ = await asyncio.wait({call.task}, timeout=timeout)
        if not finished:
            self._late(call)

    def _late(self, call: _Call) -> None:
        """Cancels a call past the budget (its answer would be dropped) and counts a strike."""
        call.task.cancel()
        node_id = call.entry.node_id
        self.metrics.node_latency.labels(node=node_id).observe(time.monotonic() - call.sent)
        self.metrics.node_slow.labels(node=node_id).inc()
        self._note(call, SLOW, slow=True)

    def metadata(self, entry: NodeEntry) -> tuple[tuple[str, str], ...]:
        return rpc.bearer(self.credential(entry.node_id)) if self.credential else ()

    def _stub(self, entry: NodeEntry) -> tuple[_Node, pb_grpc.HeadServiceStub]:
        node = self._node(entry)
        if node.stub is None:
            node.channel = rpc.open_aio_channel(entry.endpoint, self.tls, self.max_message_mb)
            node.stub = pb_grpc.HeadServiceStub(node.channel)
        return node, node.stub

    async def _call(self, call: _Call, request: pb.ScoreRequest, rows: int,
                    timeout: float) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The node's checked (raw scores, typicality or None), or None (and the failure noted) when it did not answer well."""
        entry = call.entry
        _, stub = self._stub(entry)
        reason, problem, answer = "", None, None
        rpc_call = stub.Score(request, timeout=timeout, metadata=self.metadata(entry))
        try:
            response = await rpc_call
            scores = np.asarray(response.raw_scores, dtype=np.float64)
            typicality = np.asarray(response.typicality, dtype=np.float64) if len(response.typicality) else None
            problem = check_response(entry, response, scores, rows) or check_typicality(typicality, rows)
            if problem:
                reason = "bad_answer"
                call.invalid = check_values(scores, rows) or check_typicality(typicality, rows) or ""
            else:
                answer = (scores, typicality)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            problem, reason = f"{code.name}: {exc.details()}", code.name.lower()
        except asyncio.CancelledError:  # past the latency budget: the caller counts it
            rpc_call.cancel()
            raise
        self.metrics.node_latency.labels(node=entry.node_id).observe(time.monotonic() - call.sent)
        if reason == "deadline_exceeded":
            self.metrics.node_timeouts.labels(node=entry.node_id).inc()
        elif reason:
            self.metrics.node_errors.labels(node=entry.node_id, reason=reason).inc()
        self._note(call, problem)
        return answer

    def _note(self, call: _Call, problem: str | None, slow: bool = False) -> None:
        """Tracks failures and late answers in a row (cool-down), judges probes, logs transitions."""
        entry, node, now = call.entry, call.node, time.monotonic()
        with self._lock:
            was_ok, node.ok = node.ok, problem is None
            if problem is None:
                node.failures = node.strikes = 0
                if call.probe or not node.probing:
                    node.cooled_until = 0.0
            elif slow:
                if call.sent >= node.last_strike:  # calls already in flight during the last strike's stall count once
                    node.strikes += 1
                node.last_strike = now
            else:
                node.failures += 1
            repeated = node.failures >= self.cooldown_failures or node.strikes >= self.budget.strikes
            cool = problem is not None and (call.probe or repeated)
            if call.probe:
                node.probing = False
            if cool:
                node.cooled_until = now + self.cooldown_seconds
                node.failures = node.strikes = 0
        if problem and was_ok:
            log.warning("node %s (%s at %s) did not answer: %s", entry.node_id, entry.source, entry.endpoint, problem)
        elif not problem and not was_ok:
            log.info("node %s (%s) answers again", entry.node_id, entry.source)
        if cool:
            why = "its probe failed" if call.probe and not repeated else (
                f"answered later than the latency budget {self.budget.strikes} times in a row" if slow
                else f"failed {self.cooldown_failures} times in a row")
            log.warning("node %s %s: skipped for %.1fs", entry.node_id, why, self.cooldown_seconds)

    def close(self) -> None:
        async def shutdown() -> None:
            for task in list(self._background):
                task.cancel()
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
    """Why a node's answer cannot be used (wrong source or head, count, or score values), or None."""
    if response.source != entry.source or response.head_digest != entry.head_digest:
        return f"serves {response.source}/{response.head_digest[:12]}, registered {entry.source}/{entry.head_digest[:12]}"
    return check_values(scores, rows)


def check_values(scores: np.ndarray, rows: int) -> str | None:
    """Why scores are unusable whatever head sent them (count, not a probability), or None. A node restarting
    with a new head may answer for it before it re-registers; a wrong count or value is never honest."""
    if len(scores) != rows:
        return f"returned {len(scores)} scores for {rows} images"
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

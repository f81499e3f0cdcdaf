"""Serving under load, shared by the gateway and the nodes: the micro-batcher and per-client rate limits.

`MicroBatcher` merges concurrent requests into one batch run (the gateway's trunk + fan-out, a
node's head) with every wait bounded: a batch waits at most `window` seconds for more rows and
holds at most `max_batch` rows; the queue holds at most `max_queue` rows (a full queue refuses at
once with `QueueFull`, it never blocks); an item whose deadline passed before its batch ran is
failed with `Expired` and never computed. Batching adapts to load: at most `max_inflight`
batches are unanswered at a time (the gateway's wait for its nodes), and requests arriving
meanwhile queue into the next batch, so an idle server answers a lone request at once and a busy
one runs larger batches. `RateLimiter` is a token bucket per client.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
import numpy as np

from shared_backbone.runtime.prometheus import REJECT_EXPIRED, REJECT_QUEUE, ServerMetrics

log = logging.getLogger(__name__)

IDLE_POLL = 0.5  # seconds the worker sleeps between checks for close() while the queue is empty


class QueueFull(RuntimeError):
    """The batcher's queue holds `max_queue` rows already; the caller answers RESOURCE_EXHAUSTED."""


class Expired(RuntimeError):
    """The item's deadline passed while it queued; the caller answers DEADLINE_EXCEEDED."""


@dataclass
class BatchItem:
    """One request's rows in a batch; the batch runner resolves `future`."""

    rows: np.ndarray
    deadline: float  # time.monotonic() by which the caller needs the answer
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return len(self.rows)


BatchRunner = Callable[[list[BatchItem]], None]


class MicroBatcher:
    """One worker thread that takes queued items, forms bounded batches and hands them to `run_batch`.

    `run_batch(items)` must resolve every item's future, now or later (the gateway resolves them
    when the nodes answer, so the next batch's trunk runs meanwhile); if it raises, every
    unresolved future gets the exception. `on_batch(rows)` and `on_depth(rows)` feed metrics.
    """

    def __init__(
        self,
        run_batch: BatchRunner,
        *,
        name: str,
        window: float,
        max_batch: int,
        max_queue: int,
        max_inflight: int = 1,
        on_batch: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.window = window
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.runs = 0
        self._on_batch = on_batch or (lambda rows: None)
        self._on_depth = on_depth or (lambda rows: None)
        self._items: collections.deque[BatchItem] = collections.deque()
        self._queued_rows = 0
        self._busy = False  # `run_batch` is running (in the worker or inline in a caller)
        self._inflight = 0  # batches run whose requests are not all answered yet
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, rows: np.ndarray, deadline: float) -> Future:
        """Queues one request's rows; raises QueueFull instead of waiting for room.

        With `window == 0` an item that finds the batcher idle runs at once in the caller's thread
        (no hand-off to the worker); items arriving meanwhile queue and run together after it.
        """
        item = BatchItem(rows, deadline)
        with self._ready:
            if self._closed:
                raise QueueFull("the server is shutting down")
            inline = self.window == 0 and not self._busy and not self._items and self._inflight < self.max_inflight
            if inline:
                self._busy = True
            else:
                if self._queued_rows + item.count > self.max_queue and self._items:
                    raise QueueFull(f"{self._queued_rows} rows already queued (limit {self.max_queue})")
                self._items.append(item)
                self._queued_rows += item.count
                self._on_depth(self._queued_rows)
                self._ready.notify()
        if inline:
            try:
                self._run([item])
            finally:
                self._idle()
        return item.future

    def _idle(self) -> None:
        with self._ready:
            self._busy = False
            self._ready.notify()

    def close(self) -> None:
        """Stops the worker; queued items fail with QueueFull."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=5)

    def _take(self) -> list[BatchItem] | None:
        """The next batch: the first item, then more until `window` passes or `max_batch` rows."""
        with self._ready:
            while not self._items or self._busy or self._inflight >= self.max_inflight:
                if self._closed and not self._items:
                    return None
                self._ready.wait(IDLE_POLL)
            self._busy = True
            batch = [self._pop()]
            rows = batch[0].count
            until = time.monotonic() + self.window
            while rows < self.max_batch and not self._closed:
                if not self._items:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                    continue
                if rows + self._items[0].count > self.max_batch:
                    break
                batch.append(self._pop())
                rows += batch[-1].count
            self._on_depth(self._queued_rows)
            return batch

    def _pop(self) -> BatchItem:
        item = self._items.popleft()
        self._queued_rows -= item.count
        return item

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                break
            now = time.monotonic()
            live = []
            for item in batch:
                if item.deadline <= now:
                    item.future.set_exception(Expired(f"deadline passed after {now - item.enqueued:.3f}s in the queue"))
                else:
                    live.append(item)
            try:
                if live:
                    self._run(live)
            finally:
                self._idle()
        with self._ready:
            while self._items:
                self._pop().future.set_exception(QueueFull("the server is shutting down"))

    def _run(self, items: list[BatchItem]) -> None:
        self.runs += 1
        self._on_batch(sum(item.count for item in items))
        self._track(items)
        try:
            self.run_batch(items)
        except Exception as exc:  # noqa: BLE001 - every waiting request must get the error, not hang
            log.exception("batch of %d request(s) failed", len(items))
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)

    def _track(self, items: list[BatchItem]) -> None:
        """Counts the batch in flight until every one of its requests has its answer."""
        left = [len(items)]
        with self._ready:
            self._inflight += 1

        def answered(_: Future) -> None:
            with self._ready:
                left[0] -= 1
                if left[0] == 0:
                    self._inflight -= 1
                    self._ready.notify()

        for item in items:
            item.future.add_done_callback(answered)


def concatenate(items: list[BatchItem]) -> np.ndarray:
    """The rows of a batch as one array (no copy for a lone item)."""
    return items[0].rows if len(items) == 1 else np.concatenate([item.rows for item in items])


def split(items: list[BatchItem], *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Each item's slice of batch-aligned arrays, in item order."""
    out, start = [], 0
    for item in items:
        end = start + item.count
        out.append(tuple(array[start:end] for array in arrays))
        start = end
    return out


class RateLimiter:
    """A token bucket per client key: `rate` rows per second, bursts up to `burst` rows.

    At most `max_clients` buckets are kept (least recently used dropped), so a flood of new peers
    cannot grow memory. `rate <= 0` disables the limit.
    """

    def __init__(self, rate: float, burst: float, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, rate)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, amount: int) -> float:
        """0.0 when `amount` tokens were taken, else the seconds until they would be available."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, [self.burst, now])
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if amount > tokens:
                wait = (amount - tokens) / self.rate
            else:
                tokens -= amount
            self._buckets[key] = [tokens, now]
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


def client_key(peer: str, token: str = "") -> str:
    """Who a rate limit applies to: the peer's address without its port, and its token if any."""
    host = peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return f"{host}|{token}" if token else host


def remaining(deadline: float) -> float:
    """Seconds left until a monotonic deadline (never negative)."""
    return max(0.0, deadline - time.monotonic())


def deadline_of(time_remaining: float | None, default: float) -> float:
    """The monotonic deadline of a call: the client's, capped by the server's `default` seconds."""
    seconds = default if time_remaining is None else min(time_remaining, default)
    return time.monotonic() + max(0.0, seconds)


def result_within(future: Future, deadline: float) -> Any:
    """The future's result, waiting no later than `deadline`; TimeoutError past it."""
    return future.result(timeout=remaining(deadline))


def submit_or_abort(batcher: "MicroBatcher", rows: np.ndarray, deadline: float, context: grpc.ServicerContext,
                    metrics: ServerMetrics, server: str) -> Future:
    """Queues a call's rows, or ends the call with RESOURCE_EXHAUSTED when the queue is full."""
    try:
        return batcher.submit(rows, deadline)
    except QueueFull as exc:
        metrics.rejected.labels(reason=REJECT_QUEUE).inc()
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{server} is overloaded ({exc}); retry later")


def answer_or_abort(future: Future, deadline: float, context: grpc.ServicerContext, metrics: ServerMetrics) -> Any:
    """The batch's answer for a call, or DEADLINE_EXCEEDED once its deadline has passed."""
    try:
        return result_within(future, deadline)
    except (TimeoutError, Expired) as exc:
        metrics.rejected.labels(reason=REJECT_EXPIRED).inc()
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within the call's deadline ({exc or 'timed out'})")

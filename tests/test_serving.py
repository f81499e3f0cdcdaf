"""The serving building blocks on their own: micro-batcher bounds, token buckets, compiled models."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from shared_backbone.runtime.batching import Expired, MicroBatcher, QueueFull, RateLimiter, client_key, split

WAIT = 10.0  # seconds any future in these tests may take at most


class Gate:
    """A batch runner that blocks until released and records every batch it ran."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[int]] = []

    def __call__(self, items) -> None:
        self.started.set()
        assert self.open.wait(WAIT)
        self.batches.append([item.count for item in items])
        for item, (rows,) in zip(items, split(items, np.concatenate([item.rows for item in items]))):
            item.future.set_result(rows)


def rows(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32).reshape(n, 1)


def later(seconds: float = WAIT) -> float:
    return time.monotonic() + seconds


def test_concurrent_items_share_a_batch_bounded_by_max_batch():
    gate = Gate()
    gate.open.set()
    batcher = MicroBatcher(gate, name="t", window=0.2, max_batch=5, max_queue=100)
    try:
        futures = [batcher.submit(rows(2), later()) for _ in range(4)]
        answers = [future.result(WAIT) for future in futures]
    finally:
        batcher.close()
    assert [len(a) for a in answers] == [2, 2, 2, 2]
    assert all(sum(batch) <= 5 for batch in gate.batches) and len(gate.batches) < 4, gate.batches


def test_full_queue_refuses_at_once_and_expired_items_never_run():
    gate = Gate()
    batcher = MicroBatcher(gate, name="t", window=0.001, max_batch=4, max_queue=3)
    try:
        running = batcher.submit(rows(1), later())
        assert gate.started.wait(WAIT)  # the worker is busy with `running`
        short = batcher.submit(rows(1), time.monotonic() + 0.05)
        queued = batcher.submit(rows(2), later())
        with pytest.raises(QueueFull, match="limit 3"):
            batcher.submit(rows(1), later())
        time.sleep(0.1)  # `short` is past its deadline while it waits
        gate.open.set()
        assert len(running.result(WAIT)) == 1 and len(queued.result(WAIT)) == 2
        with pytest.raises(Expired):
            short.result(WAIT)
    finally:
        batcher.close()
    assert gate.batches == [[1], [2]]  # the expired row was never computed


def test_without_window_an_idle_batcher_runs_in_the_callers_thread():
    threads = []

    def record(items) -> None:
        threads.append(threading.current_thread().name)
        for item in items:
            item.future.set_result(item.rows)

    batcher = MicroBatcher(record, name="worker", window=0.0, max_batch=4, max_queue=8)
    try:
        assert len(batcher.submit(rows(2), later()).result(WAIT)) == 2
    finally:
        batcher.close()
    assert threads == [threading.current_thread().name]


def test_a_failing_batch_fails_its_requests_and_close_fails_the_queue():
    def broken(items) -> None:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken, name="t", window=0.0, max_batch=4, max_queue=8)
    future = batcher.submit(rows(1), later())
    with pytest.raises(RuntimeError, match="exploded"):
        future.result(WAIT)
    batcher.close()
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit(rows(1), later())


def test_token_bucket_per_client():
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=20, clock=lambda: now[0])
    assert limiter.take("a", 20) == 0.0
    assert limiter.take("a", 5) == pytest.approx(0.5)
    assert limiter.take("b", 5) == 0.0  # another client has its own bucket
    now[0] += 0.5
    assert limiter.take("a", 5) == 0.0
    assert not RateLimiter(0, 0).enabled and RateLimiter(0, 0).take("a", 10**6) == 0.0
    assert client_key("ipv4:127.0.0.1:5555") == client_key("ipv4:127.0.0.1:6666") == "ipv4:127.0.0.1"
    assert client_key("ipv6:[::1]:5555", "Bearer t") == "ipv6:[::1]|Bearer t"


def test_compiled_model_traces_once_and_equals_eager_keras():
    from shared_backbone.model import networks
    from shared_backbone.model.compiled import CompiledModel

    primary = networks.build_primary(32)
    serving = networks.build_serving_model(primary)
    compiled = CompiledModel(serving)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 1, 16, 7, 64, 2):
        inputs = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
        fake, features = compiled(inputs)
        eager_fake, eager_features = serving(inputs, training=False)
        np.testing.assert_array_equal(fake, np.asarray(eager_fake))
        np.testing.assert_array_equal(features, np.asarray(eager_features))
    assert compiled.traces == 1

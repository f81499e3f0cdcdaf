"""One trunk run per micro-batch merged from concurrent requests (the gateway's only heavy step)."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from shared_backbone.model.features import as_head_features


class TrunkBatcher:
    """Runs the serving model on micro-batches merged from concurrent requests.

    Requests queue their preprocessed inputs; one worker thread takes the first, waits up to
    `window` seconds for more (until `max_batch` images), runs the model once and hands every
    request its slice. A lone request therefore runs with exactly its own batch.
    """

    def __init__(self, serving: object, *, window: float, max_batch: int) -> None:
        self.serving = serving
        self.window = window
        self.max_batch = max_batch
        self.runs = 0
        self._queue: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="trunk-batcher", daemon=True)
        self._thread.start()

    def run(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fake scores (N,) float64, wire features (N, H/4, W/4, 16) float16) for one request."""
        future: Future = Future()
        self._queue.put((inputs, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.window
            while size < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                if size + len(item[0]) > self.max_batch:
                    self._run(batch)
                    batch, size = [], 0
                batch.append(item)
                size += len(item[0])
            if batch:
                self._run(batch)

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            inputs = batch[0][0] if len(batch) == 1 else np.concatenate([item[0] for item in batch])
            fake, features = self.serving(inputs, training=False)
            fake = np.asarray(fake).reshape(-1).astype(np.float64)
            features = as_head_features(np.asarray(features))
            self.runs += 1
        except Exception as exc:  # noqa: BLE001 - every waiting request must get the error, not hang
            for _, future in batch:
                future.set_exception(exc)
            return
        start = 0
        for item, future in batch:
            end = start + len(item)
            future.set_result((fake[start:end], features[start:end]))
            start = end

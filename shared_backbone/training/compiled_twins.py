"""Compiled twins: one compiled model per architecture, reused by every fit in a process.

Keras traces a model's train and validation steps on its first fit: about 2 s on 2 cores, while a
head trains in 1-3 s on cached trunk features, so tracing was most of a head's training time. A
node retraining, a benchmark's dozens of heads and detectors and the test suite's all share a few
architectures, so `fit` and `fit_arrays` train a *twin*: a compiled model of the same architecture
(trainable flags included) that receives the given model's weights and a reset optimizer (zero
moments, step 0, the run's learning rate), which is exactly the state a fresh compile starts from:
the trained weights are the same, bit for bit (tests/test_training.py checks it). The weights are
copied back into the caller's model afterwards (layers it shares with another model, such as the
trunk of the source-aware pretext classifier, are updated with it). A model Keras cannot rebuild
from its config is compiled and trained itself, as before.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

_TWINS: dict[str, Any] = {}
_LOCK = threading.Lock()  # one fit per twin at a time (and the dict)


def _without_initializers(value: Any) -> Any:
    """A model config without initializer settings: models differing only in their initial weights share a twin."""
    if isinstance(value, dict):
        return {k: _without_initializers(v) for k, v in value.items() if not k.endswith("initializer")}
    if isinstance(value, list):
        return [_without_initializers(v) for v in value]
    return value


def architecture_key(model, task: str) -> str:
    """What a traced train step depends on: the architecture (layers, shapes, constants such as BatchNorm
    momentum) and the task (loss and metrics), not the initial weights or the learning rate."""
    return json.dumps([_without_initializers(model.get_config()), task], sort_keys=True, default=str)


def _reset(twin, model, learning_rate: float) -> None:
    twin.set_weights(model.get_weights())
    for variable in twin.optimizer.variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    twin.optimizer.learning_rate.assign(learning_rate)
    twin.stop_training = False


@contextmanager
def compiled_twin(model, task: str, learning_rate: float, compile_model: Callable[[Any], None]) -> Iterator[Any]:
    """A compiled model of `model`'s architecture holding its weights and a fresh optimizer state; after the
    block, `model` holds the twin's (trained) weights. `compile_model(model)` compiles a new twin."""
    import keras

    key = architecture_key(model, task)
    with _LOCK:
        twin = _TWINS.get(key)
        if twin is None:
            try:
                twin = keras.Model.from_config(model.get_config())
            except Exception as exc:  # noqa: BLE001 - e.g. a layer Keras cannot rebuild: train the model itself
                log.debug("no compiled twin for %s (%s); compiling it", model.name, exc)
                compile_model(model)
                yield model
                return
            compile_model(twin)
            twin.optimizer.build(twin.trainable_variables)
            _TWINS[key] = twin
        _reset(twin, model, learning_rate)
        yield twin
        model.set_weights(twin.get_weights())


def clear() -> None:
    """Forgets every twin (they hold traced functions and weights; tests use this to compare with fresh compiles)."""
    with _LOCK:
        _TWINS.clear()

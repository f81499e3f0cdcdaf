"""Serving-time inference: a Keras model traced once into a `tf.function` with a fixed signature.

Calling a Keras functional model eagerly dispatches every layer from Python (about 30 ms for the
64 px serving model at batch 1 on 2 CPU cores, 2.5 ms traced); a traced graph runs in TensorFlow's
own threads with the GIL released. The signature fixes everything but the batch dimension
(`None`), so every batch size runs the same graph: one trace per model, never a retrace (the
`traces` counter says so; a test reads it). XLA (`jit_compile`) was measured slower on CPU for
these small convolutions (79 ms vs 21 ms at batch 64) and would compile once per batch size,
so it is not used.

Outputs equal the eager model's bit for bit, so offline (eager) and network (compiled) answers
stay identical: Grappler's remapper, which fuses Conv2D + BiasAdd + ReLU into one kernel and
rounds differently in the last bit, is switched off for the process when the first model is
compiled (measured: no slower for these models, 16 vs 18 ms at batch 64).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_exact = False


def exact_graphs() -> None:
    """Switches off Grappler's remapper for the process (fused ops round differently from eager kernels).

    Per function it cannot be done: a graph is re-optimised for new input shapes, so restoring
    the option after a warm-up brought the last-bit differences back (measured).
    """
    global _exact
    if not _exact:
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"remapping": False})
        _exact = True


class CompiledModel:
    """`model(x, training=False)` as one traced graph; call from any thread, one call at a time runs."""

    def __init__(self, model: Any, name: str | None = None) -> None:
        import tensorflow as tf

        exact_graphs()
        self.model = model
        self.name = name or model.name
        self.traces = 0
        self._lock = threading.Lock()
        shape = [None, *[int(d) for d in model.input_shape[1:]]]

        def forward(inputs):
            self.traces += 1  # runs only while TensorFlow traces, never per call
            return model(inputs, training=False)

        function = tf.function(forward, input_signature=[tf.TensorSpec(shape, tf.float32, name="inputs")])
        # The concrete graph itself: calling it skips tf.function's per-call argument binding and
        # signature lookup, about half of a small model's Python-side cost per call.
        self._concrete = function.get_concrete_function()
        self._tf = tf
        self.warm_up()

    def __call__(self, inputs: np.ndarray) -> Any:
        """The model's outputs as numpy arrays (a list for multi-output models)."""
        tensor = self._tf.convert_to_tensor(np.asarray(inputs, dtype=np.float32))
        with self._lock:
            outputs = self._concrete(tensor)
        if isinstance(outputs, (list, tuple)):
            return [np.asarray(output) for output in outputs]
        return np.asarray(outputs)

    def warm_up(self) -> None:
        """Runs one image of zeros, so the first request does not pay for the graph's first run."""
        self(np.zeros((1, *self.model.input_shape[1:]), dtype=np.float32))

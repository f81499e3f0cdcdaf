"""Which device TensorFlow runs on: GPU with memory growth when one is visible, else CPU."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_configured = False


def configure_tensorflow(threads: int = 0) -> str:
    """Quietens TF, enables GPU memory growth, logs and returns the device in use ("GPU:0" or "CPU").

    `threads > 0` caps TensorFlow's intra- and inter-op thread pools (before its first op): a node
    process serving one tiny head gains nothing from more, and every idle pool thread that spins
    takes CPU from the other processes on the machine.
    """
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads > 0 and not _configured:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    if not _configured:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass
        _configured = True
        device = f"GPU:0 ({len(gpus)} visible)" if gpus else "CPU"
        log.info("TensorFlow %s running on %s", tf.__version__, device)
    return "GPU:0" if gpus else "CPU"

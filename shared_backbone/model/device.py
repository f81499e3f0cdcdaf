"""Which device TensorFlow runs on: GPU with memory growth when one is visible, else CPU."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
_configured = False


def configure_tensorflow() -> str:
    """Quietens TF, enables GPU memory growth, logs and returns the device in use ("GPU:0" or "CPU")."""
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

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

"""The interface between trunk and heads: the shape and precision of the features a head reads.

Heads read the trunk's `dRelu_04` output rounded to float16, in training, offline prediction and
serving alike: the network carries them as float16, so every path rounds the same way and offline
and network answers are identical. Numpy only, so the wire layer can use it without Keras.
"""

from __future__ import annotations

import numpy as np

TRUNK_DOWNSAMPLE = 4
TRUNK_CHANNELS = 16
FEATURE_DTYPE = np.float16


def feature_shape(image_size: int) -> tuple[int, int, int]:
    """Shape of the trunk output (`dRelu_04`) for one image."""
    side = image_size // TRUNK_DOWNSAMPLE
    return (side, side, TRUNK_CHANNELS)


def as_head_features(features: np.ndarray) -> np.ndarray:
    """Trunk features as every head reads them: float16, C-contiguous."""
    return np.ascontiguousarray(features, dtype=FEATURE_DTYPE)

"""Trunk features computed once: a head trains on a frozen trunk, so its inputs never change.

Running the trunk over every image in every epoch costs as much as training the full network;
with the trunk frozen (BatchNorm in inference mode) the features of an image are fixed, so they
are computed once, rounded to the heads' float16 input exactly as serving rounds them, and the
head then trains for many epochs in seconds. Training on perturbations draws `copies` perturbed
versions of each image through the same perturbation pipeline and keeps their features too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from shared_backbone.config import PerturbConfig
from shared_backbone.data.datasets import Sample
from shared_backbone.data.perturbations import perturb_randomly
from shared_backbone.model.features import as_head_features
from shared_backbone.model.preprocessing import ImageDecodeError, InputSpec, load_image, to_model_input

log = logging.getLogger(__name__)

BATCH = 256


def load_images(samples: Sequence[Sample], size: int) -> list[np.ndarray]:
    """Every readable sample as uint8 HxWx3 at the model size; unreadable files are logged and skipped."""
    images = []
    for sample in samples:
        try:
            images.append(load_image(sample.path, size))
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping unreadable image %s: %s", sample.path, exc)
    return images


def versions(images: Sequence[np.ndarray], perturb: PerturbConfig | None, copies: int, seed: int) -> list[np.ndarray]:
    """The images, then `copies` perturbed versions of each (none without perturbation kinds)."""
    if not perturb or not perturb.kinds or copies <= 0:
        return list(images)
    rng = np.random.default_rng([seed, 23])
    extra = [perturb_randomly(image, perturb, rng) for _ in range(copies) for image in images]
    return [*images, *extra]


def trunk_features(trunk, images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """float16 trunk features (N, H/4, W/4, 16) of uint8 images, in batches (bounded memory)."""
    from shared_backbone.model.features import feature_shape

    out = np.empty((len(images), *feature_shape(spec.image_size)), dtype=np.float16)
    for start in range(0, len(images), BATCH):
        batch = np.stack([to_model_input(image, spec) for image in images[start : start + BATCH]])
        out[start : start + len(batch)] = as_head_features(np.asarray(trunk(batch, training=False)))
    return out

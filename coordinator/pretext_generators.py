"""The coordinator's pretext generators: random generators of its own, for its trunk and its detector.

The trunk every head reads is pretrained to tell the coordinator's sources apart, so it learns
the fingerprints of the few generators the coordinator holds, and a family it never saw may
leave no trace in the features (leave-one-family-out: a head then has nothing to separate its
source with). Here the coordinator adds `generators` classes to that pretraining, each one
random network of `shared_backbone.data.negative_space` (the nodes' negative space: no code
shared with any benchmark generator) re-rendering the coordinator's own real images. Telling
many random upsamplers apart asks the trunk for upsampling fingerprints in general.
With `pretext.detector` the generative networks' images are also fakes in the detector's training:
a detector that knows only the coordinator's few generators may call another generator's images
real. A classical resampler's images are not: the network must never call a resized photo generated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from coordinator.config import PretextConfig
from shared_backbone.data.datasets import Sample
from shared_backbone.data.negative_space import RESAMPLER_FAMILY
from shared_backbone.data.negatives import NegativeSettings, negative_networks, render_negatives
from shared_backbone.model.preprocessing import load_image

log = logging.getLogger(__name__)

PRETEXT_PREFIX = "pretext-"  # class names; `train_primary` refuses a dataset source that starts with it
SPLITS = ("train", "val")


def pretext_samples(reals: dict[str, list[Sample]], image_size: int, config: PretextConfig, seed: int,
                    out: Path) -> tuple[list[str], dict[str, list[Sample]]]:
    """(class names in order, per split the rendered images as samples whose source is their class name).

    `reals`: the coordinator's real training and validation samples. Each network renders up to
    `config.per_generator` images per split (all reals when 0); written once under `out`.
    """
    settings = NegativeSettings(count=0, generators=config.generators, seed=seed * 1000 + config.seed,
                                exclude_families=tuple(config.exclude_families))
    networks = negative_networks(settings)
    names = [f"{PRETEXT_PREFIX}{index}-{network.family}" for index, network in enumerate(networks)]
    samples: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for split in SPLITS:
        if not reals[split]:
            continue
        images = np.stack([load_image(s.path, image_size) for s in reals[split]])
        for index, (name, network) in enumerate(zip(names, networks)):
            samples[split].extend(_render_class(images, network, name, index, split, config, seed, out))
    log.info("pretext generators: %d networks (%s), %d train / %d val images", len(networks),
             ", ".join(sorted({n.name.split("_")[0] for n in networks})), len(samples["train"]), len(samples["val"]))
    return names, samples


def _render_class(images: np.ndarray, network, name: str, index: int, split: str, config: PretextConfig, seed: int,
                  out: Path) -> list[Sample]:
    """One network's images of one split, as PNG files (rendered once; a rerun reads them back)."""
    folder = out / name / split
    count = len(images) if config.per_generator <= 0 else min(config.per_generator, len(images))
    paths = [folder / f"{i:05d}.png" for i in range(count)]
    if not all(path.is_file() for path in paths):
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, config.seed, index, SPLITS.index(split)])
        picked = images[rng.permutation(len(images))[:count]]
        for path, image in zip(paths, render_negatives(picked, network, rng)):
            Image.fromarray(image).save(path)
    return [Sample(path, name) for path in paths]


def generative(samples: list[Sample]) -> list[Sample]:
    """The pretext images of generative networks (a class `pretext-<index>-<family>`), the resamplers' left out."""
    return [s for s in samples if s.source.rsplit("-", 1)[-1] != RESAMPLER_FAMILY]

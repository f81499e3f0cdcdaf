"""The gateway's canaries: labelled images no node has received, mixed into the batches nodes score.

Three kinds, each labelled with what a node may honestly claim of it (only images of its own source):
- `~coordinator-generators`: fresh renders of the coordinator's reals by random networks of the
  nodes' negative space (`shared_backbone/data/negative_space.py`), drawn at every gateway start
  from a secret seed, so no node has seen them or the networks that made them. No member made
  them: a claim is always false. They need nothing but the reference set, so audits work from the
  first minute.
- real images (`real`): the coordinator's own reals that it never distributes
  (`gateway.audit.private_reals`, e.g. its dataset's test split), else the reference set's, which
  every node holds; the renders above start from the same images. Without private reals, a node
  that recognises the reference set's scenes by their features spares the canaries
  (`tests/test_trust.py` shows one capturing answers then).
- members' private audit sets (`gateway.audit.reference`, one sub-folder per source, deposited
  with the coordinator by consenting members and never distributed): images of member sources
  that other nodes must not claim, and that show how the depositing node scores its own images.

Every draw is a fresh view of a random pick, so a node cannot learn the pool's bytes either.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.reference import DESCRIPTION
from shared_backbone.data.negatives import NegativeSettings, make_negatives
from shared_backbone.model import preprocessing

log = logging.getLogger(__name__)

OWN_GENERATORS = "~coordinator-generators"  # not a valid source name: no node can register it
REAL = "real"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class CanaryError(ValueError):
    """The canary pool cannot be built (missing or unreadable reference set or audit folder)."""


@dataclass
class CanaryPool:
    """uint8 RGB canaries and their labels; `draw` hands out fresh model inputs of random picks."""

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) str: a source, `real` or OWN_GENERATORS
    spec: preprocessing.InputSpec

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(model inputs, labels) of `count` random canaries, each a fresh view (flip, +-1 dither)."""
        picks = rng.integers(0, len(self.labels), size=count)
        views = self.images[picks].astype(np.int16)
        flip = rng.random(count) < 0.5
        views[flip] = views[flip, :, ::-1]
        views += rng.integers(-1, 2, size=views.shape, dtype=np.int16)
        inputs = preprocessing.to_model_inputs(np.clip(views, 0, 255).astype(np.uint8), self.spec)
        return inputs, self.labels[picks]

    @functools.cached_property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one model input (what the trunk takes)."""
        return preprocessing.to_model_inputs(self.images[:1], self.spec).shape[1:]

    @functools.cached_property
    def counts(self) -> dict[str, int]:
        """Canaries per label (the pool never changes, so counted once)."""
        labels, counts = np.unique(self.labels, return_counts=True)
        return dict(zip(labels.tolist(), counts.tolist()))


def _images_of(folder: Path, size: int, limit: int) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    return [preprocessing.load_image(path, size) for path in paths]


def reference_reals(reference: str | Path, size: int, limit: int) -> list[np.ndarray]:
    """Up to `limit` real images of the coordinator's reference set (its sources of kind `real`)."""
    folder = Path(reference)
    try:
        sources = json.loads((folder / DESCRIPTION).read_text())["sources"]
    except (OSError, ValueError, KeyError) as exc:
        raise CanaryError(f"{folder / DESCRIPTION}: cannot read the reference set's description ({exc})") from None
    reals: list[np.ndarray] = []
    for name, info in sorted(sources.items()):
        if info.get("kind") == "real" and (folder / name).is_dir():
            reals.extend(_images_of(folder / name, size, limit - len(reals)))
    if not reals:
        raise CanaryError(f"{folder}: the reference set holds no real images to audit with")
    return reals


def deposited(folder: str | Path, size: int, per_source: int) -> dict[str, list[np.ndarray]]:
    """Members' private audit sets: up to `per_source` images of each sub-folder (named by its source)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CanaryError(f"{folder} is not a folder (gateway.audit.reference: one sub-folder of images per source)")
    return {sub.name: _images_of(sub, size, per_source) for sub in sorted(folder.iterdir()) if sub.is_dir()}


def build_pool(reference: str | Path, deposits: str | Path, spec: preprocessing.InputSpec, *, reals: int,
               own_generators: int, per_source: int, seed: int | None = None, private_reals: str | Path = "") -> CanaryPool:
    """The pool from the coordinator's reals (`private_reals`, else the reference set's), fresh renders of them,
    and the deposited audit sets (if any)."""
    if private_reals:
        if not Path(private_reals).is_dir():
            raise CanaryError(f"{private_reals} is not a folder (gateway.audit.private_reals: real images)")
        real_images = _images_of(Path(private_reals), spec.image_size, reals)
    else:
        log.warning("canary pool: no gateway.audit.private_reals; the canaries share their scenes with the "
                    "reference set every node holds, so a node could recognise them by content")
        real_images = reference_reals(reference, spec.image_size, reals)
    if not real_images:
        raise CanaryError(f"{private_reals}: no real images to audit with")
    seed = secrets.randbits(62) if seed is None else seed  # unknown to every node: fresh networks each start
    settings = NegativeSettings(count=own_generators, generators=max(1, min(24, own_generators // 4)), seed=seed)
    groups = {REAL: real_images, OWN_GENERATORS: make_negatives(real_images, settings) if own_generators else []}
    for source, images in (deposited(deposits, spec.image_size, per_source) if deposits else {}).items():
        groups.setdefault(source, []).extend(images)
    labels = [label for label, images in groups.items() for _ in images]
    pool = CanaryPool(np.stack([image for images in groups.values() for image in images]), np.array(labels), spec)
    log.info("canary pool: %s", ", ".join(f"{count} {label}" for label, count in pool.counts.items()))
    return pool

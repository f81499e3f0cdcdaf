"""The coordinator's pretext generators: rendered from its own reals, deterministic, excluded families stay out."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from coordinator.config import PretextConfig
from coordinator.trunk_pretext import PRETEXT_PREFIX, pretext_samples
from shared_backbone.data.datasets import Sample


def _reals(folder, count: int, size: int = 16) -> list[Sample]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(path, "real"))
    return samples


def test_pretext_classes_are_rendered_once_and_deterministic(tmp_path):
    reals = {"train": _reals(tmp_path / "train", 6), "val": _reals(tmp_path / "val", 3)}
    config = PretextConfig(generators=3, per_generator=4)
    names, first = pretext_samples(reals, 16, config, seed=1, out=tmp_path / "a")
    assert names == [f"{PRETEXT_PREFIX}{i}" for i in range(3)] == sorted({s.source for s in first["train"]})
    assert len(first["train"]) == 12 and len(first["val"]) == 9  # val: all 3 reals per network (fewer than 4)
    _, again = pretext_samples(reals, 16, config, seed=1, out=tmp_path / "b")
    for a, b in zip(first["train"], again["train"]):
        assert a.path.read_bytes() == b.path.read_bytes()
    real_pixels = np.stack([np.asarray(Image.open(s.path)) for s in reals["train"]])
    rendered = np.asarray(Image.open(first["train"][0].path))
    assert rendered.shape == (16, 16, 3) and not any((rendered == image).all() for image in real_pixels)


def test_excluded_families_are_never_drawn(caplog):
    from shared_backbone.data.negatives import NegativeSettings, negative_networks

    networks = negative_networks(NegativeSettings(count=0, generators=12, exclude_families=("nnconv", "bilinear")))
    assert not {n.name.split("_")[0] for n in networks} & {"nnconv", "bilinear"}
    with pytest.raises(ValueError, match="unknown"):
        PretextConfig(generators=2, exclude_families=["stylegan"])

"""The coordinator's pretext generators: rendered from its own reals, deterministic, excluded families stay out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coordinator.config import PretextConfig
from coordinator.pretext_generators import PRETEXT_PREFIX, generative, pretext_samples
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
    assert [n.rsplit("-", 1)[0] for n in names] == [f"{PRETEXT_PREFIX}{i}" for i in range(3)]
    assert names == sorted({s.source for s in first["train"]})
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
    with pytest.raises(ValueError, match="neither trunk nor detector"):
        PretextConfig(generators=2, trunk=False, detector=False)


def test_pretext_generators_train_the_detector_only_where_asked(tiny_zoo_config, tmp_path):
    """`pretext.detector` adds the generators' images to the detector's fakes; `trunk: false` keeps them out of its classes."""
    from coordinator.config import CoordinatorConfig
    from coordinator.train_primary import train_primary
    from shared_backbone.config import TrainConfig

    config = CoordinatorConfig(
        data=tiny_zoo_config, train=TrainConfig(epochs=1, batch_size=32, min_epochs=1, seed=0),
        pretext=PretextConfig(generators=2, per_generator=8, trunk=False, detector=True), run_dir=str(tmp_path / "run"),
    )
    trained_on = train_primary(config, progress=False).metrics["trained_on"]
    names = sorted(p.name for p in (tmp_path / "run" / "pretext").iterdir())
    generative = [n for n in names if not n.endswith("-classical")]
    assert len(names) == 2 and generative and len(list((tmp_path / "run" / "pretext" / names[0] / "train").iterdir())) == 8
    assert set(generative) <= set(trained_on["detector"]) and not set(names) & set(trained_on["trunk"])
    assert "real" in trained_on["trunk"]


def test_a_resampler_is_never_a_detector_fake():
    """A classical resampler made no generated image: its pretext class stays out of the detector's fakes."""
    samples = [Sample(Path(f"{name}.png"), name) for name in (f"{PRETEXT_PREFIX}0-tconv", f"{PRETEXT_PREFIX}1-classical")]
    assert [s.source for s in generative(samples)] == [f"{PRETEXT_PREFIX}0-tconv"]

"""Folder-per-source datasets: scanning, real/fake declaration, deterministic stratified splits and
the streaming tf.data input."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared_backbone.config import DataConfig, PerturbConfig
from shared_backbone.data.datasets import (
    DatasetError,
    load_split,
    make_tf_dataset,
    read_model_input,
    read_source_ids,
    scan_dataset,
    split_samples,
)
from shared_backbone.model.preprocessing import InputSpec
from tests.fixtures_data import TINY_ZOO_PER_SOURCE


def copy_sources(tiny_zoo: Path, out: Path, sources: dict[str, int]) -> Path:
    """A dataset of the first N images of some zoo sources (a private copy we may modify)."""
    for source, count in sources.items():
        (out / source).mkdir(parents=True)
        for path in sorted((tiny_zoo / source).glob("*.png"))[:count]:
            shutil.copy(path, out / source / path.name)
    return out


def split_names(splits) -> dict[str, set[str]]:
    return {name: {f"{s.source}/{s.path.name}" for s in samples} for name, samples in splits.items()}


def test_split_is_deterministic_stratified_and_seeded(tiny_zoo_config):
    _, first = load_split(tiny_zoo_config)
    _, again = load_split(tiny_zoo_config)
    assert split_names(first) == split_names(again)
    names = split_names(first)
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    total = 6 * TINY_ZOO_PER_SOURCE
    assert sum(len(v) for v in names.values()) == total
    # Stratified: every source is split with the same fractions (binomial noise: +-4 sd of total x 0.15).
    expected, four_sd = 0.15 * total, 4 * (total * 0.15 * 0.85) ** 0.5
    assert abs(len(first["test"]) - expected) < four_sd and abs(len(first["val"]) - expected) < four_sd
    for source in ("real", "tconv_a", "pixshuffle_a"):
        counts = [sum(1 for s in first[name] if s.source == source) for name in ("train", "val", "test")]
        assert sum(counts) == TINY_ZOO_PER_SOURCE and min(counts) > 0 and counts[0] > counts[1] and counts[0] > counts[2]
    _, reseeded = load_split(dataclasses.replace(tiny_zoo_config, split_seed=1))
    assert split_names(reseeded)["test"] != names["test"]


def test_split_is_stable_when_files_are_added(tiny_zoo, tmp_path):
    root = copy_sources(tiny_zoo, tmp_path / "d", {"real": 20, "tconv_a": 20})
    config = DataConfig(root=str(root), image_size=32)
    before = split_names(split_samples(scan_dataset(config), seed=3))
    for path in sorted((tiny_zoo / "real").glob("*.png"))[20:40]:
        shutil.copy(path, root / "real" / path.name)
    after = split_names(split_samples(scan_dataset(config), seed=3))
    # The old files that remain in a split keep it; none moves between splits.
    for name in before:
        moved = {f for f in before[name] if any(f in after[other] for other in after if other != name)}
        assert not moved, (name, moved)


def test_real_sources_arch_level_and_source_ids(tiny_zoo, tiny_zoo_config, tmp_path):
    index = scan_dataset(tiny_zoo_config)
    assert index.real_sources == {"real"} and index.class_of("real") == "real"
    assert index.fake_classes == ["bilinear_a", "nnconv_a", "pixshuffle_a", "tconv_a", "tconv_b"]
    grouped = scan_dataset(dataclasses.replace(tiny_zoo_config, arch_level=True))
    assert grouped.class_of("tconv_b") == "tconv" and grouped.fake_classes == ["bilinear", "nnconv", "pixshuffle", "tconv"]
    ids = tmp_path / "source_ids.csv"
    ids.write_text("tconv_a,1\ntconv_b,2\nnnconv_a,3\nbilinear_a,4\npixshuffle_a,5\n")
    assert read_source_ids(ids)["nnconv_a"] == 3
    from_csv = scan_dataset(DataConfig(root=str(tiny_zoo), real_sources=[], source_ids=str(ids)))
    assert from_csv.real_sources == {"real"}
    ids.write_text("tconv_a,1\nbroken line\n")
    with pytest.raises(DatasetError, match=r"source_ids.csv:2"):
        read_source_ids(ids)
    with pytest.raises(DatasetError, match="real source folder"):
        scan_dataset(DataConfig(root=str(tiny_zoo), real_sources=["celeba"]))
    with pytest.raises(DatasetError, match="not found"):
        scan_dataset(DataConfig(root=str(tmp_path / "absent")))
    capped = scan_dataset(dataclasses.replace(tiny_zoo_config, max_per_source=5))
    assert set(capped.counts().values()) == {5}


def test_read_model_input_applies_the_perturbation(tiny_zoo):
    path = sorted((tiny_zoo / "real").glob("*.png"))[0]
    spec = InputSpec(32)
    clean = read_model_input(path, spec)
    assert clean.shape == (32, 32, 3) and clean.dtype == np.float32
    noisy = read_model_input(path, spec, PerturbConfig(kinds=["noise"], probability=1.0, noise_sigma=[0.1, 0.1]), np.random.default_rng(0))
    assert np.abs(noisy - clean).mean() > 0.05


def test_tf_stream_yields_shapes_labels_and_skips_unreadable_files(tiny_zoo, tmp_path, caplog):
    root = copy_sources(tiny_zoo, tmp_path / "d", {"real": 6, "tconv_a": 6})
    broken = root / "tconv_a" / "zz_broken.png"
    broken.write_bytes(b"not an image at all")
    index = scan_dataset(DataConfig(root=str(root), image_size=32))
    labels = np.array([0.0 if s.source == "real" else 1.0 for s in index.samples], dtype=np.float32)
    with caplog.at_level(logging.WARNING):
        dataset = make_tf_dataset(index.samples, labels, InputSpec(32), batch_size=4)
        batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    images = np.concatenate([b[0] for b in batches])
    streamed = np.concatenate([b[1] for b in batches])
    assert images.shape == (12, 32, 32, 3) and batches[0][0].shape == (4, 32, 32, 3)
    assert streamed.tolist() == [0.0] * 6 + [1.0] * 6  # unshuffled order, the broken file dropped
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert str(broken) in caplog.text
    expected = read_model_input(index.samples[0].path, InputSpec(32))
    assert np.allclose(images[0], expected)
    with pytest.raises(DatasetError, match="empty"):
        make_tf_dataset([], np.array([]), InputSpec(32), batch_size=4)

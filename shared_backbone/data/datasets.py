"""Folder-per-source datasets: scanning, deterministic splits and the streaming tf.data input.

A dataset is `ROOT/<source>/*.png|jpg|...`. Which sources are real comes from the config
(`real_sources`) or from a seed-style `source_ids.csv` (listed names are fakes; real is id 0).
With `arch_level`, sources are grouped by the text before the first `_` (`stylegan_tpdne` and
`stylegan_100k` are both `stylegan`); real sources are always the class `real`.

A dataset whose `manifest.json` has `group_splits` (group -> split; the real-generator benchmark's
photo split) is split by it: a file's group is its name after the first '-' (`00012-chelsea.png`
is in group `chelsea`), so every patch of a photograph lands in that photograph's split.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared_backbone.config import DataConfig, PerturbConfig
from shared_backbone.data.perturbations import perturb_randomly
from shared_backbone.model.preprocessing import ACCEPTED_SUFFIXES, ImageDecodeError, InputSpec, load_image, to_model_input

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ACCEPTED_SUFFIXES
REAL_CLASS = "real"
SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.json"
GROUP_SEPARATOR = "-"


class DatasetError(ValueError):
    """A dataset folder or source list that cannot be used."""


@dataclass(frozen=True)
class Sample:
    path: Path
    source: str


@dataclass
class DatasetIndex:
    """Every image of a dataset with its source, and which sources are real."""

    root: Path
    sources: list[str]
    real_sources: set[str]
    samples: list[Sample]
    arch_level: bool = False
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    group_splits: dict[str, str] | None = None  # the dataset's own split of file groups, if it has one

    def is_real(self, source: str) -> bool:
        return source in self.real_sources

    def class_of(self, source: str) -> str:
        """The attribution class of a source folder (arch-level grouping applied)."""
        if self.is_real(source):
            return REAL_CLASS
        return source.split("_", 1)[0] if self.arch_level else source

    @property
    def fake_classes(self) -> list[str]:
        return sorted({self.class_of(s) for s in self.sources if not self.is_real(s)})

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sample in self.samples:
            counts[sample.source] = counts.get(sample.source, 0) + 1
        return counts


def expand_image_paths(paths: list[str]) -> list[tuple[Path, str | None]]:
    """Command-line paths -> image files: folders expanded recursively (sorted), files as given.

    A path that does not exist is kept with the reason, so tools report it in order and go on.
    """
    expanded: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                log.warning("%s: no image files (%s) found", path, ", ".join(sorted(IMAGE_SUFFIXES)))
            expanded.extend((p, None) for p in found)
        elif path.is_file():
            expanded.append((path, None))
        else:
            expanded.append((path, "no such file or folder"))
    return expanded


def read_source_ids(path: str | Path) -> dict[str, int]:
    """The seed's `name,id` file; names listed there are fake sources."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    except FileNotFoundError:
        raise DatasetError(f"source ids file {path} not found") from None
    ids = {}
    for line, row in enumerate(rows, 1):
        if len(row) != 2 or not row[1].strip().lstrip("-").isdigit():
            raise DatasetError(f"{path}:{line}: expected 'name,id', got {','.join(row)!r}")
        ids[row[0].strip()] = int(row[1])
    return ids


def scan_dataset(config: DataConfig) -> DatasetIndex:
    """Lists the dataset's images per source (sorted, so every run sees the same order)."""
    root = Path(config.root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} not found")
    sources = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sources:
        raise DatasetError(f"{root}: no source sub-folders")
    if config.source_ids:
        fake = set(read_source_ids(config.source_ids))
        real = {s for s in sources if s not in fake}
    else:
        real = set(config.real_sources)
    missing = sorted(real - set(sources)) if not config.source_ids else []
    if missing:
        raise DatasetError(f"{root}: real source folder(s) {', '.join(missing)} not found (have {', '.join(sources)})")
    samples = []
    for source in sources:
        files = sorted(p for p in (root / source).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if config.max_per_source:
            files = files[: config.max_per_source]
        samples.extend(Sample(p, source) for p in files)
    if not samples:
        raise DatasetError(f"{root}: no images found")
    return DatasetIndex(root, sources, real, samples, config.arch_level, group_splits=read_group_splits(root))


def read_group_splits(root: Path) -> dict[str, str] | None:
    """The manifest's `group_splits` (group -> train/val/test), or None when it has none."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        groups = json.loads(path.read_text()).get("group_splits")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a JSON object ({exc})") from None
    if groups is None:
        return None
    if not isinstance(groups, dict) or not set(groups.values()) <= set(SPLITS):
        raise DatasetError(f"{path}: group_splits must map each group to one of {', '.join(SPLITS)}")
    return dict(groups)


def group_of(path: Path) -> str:
    """`00012-chelsea.png` -> `chelsea`: the file's split group (its name after the first '-')."""
    return path.stem.partition(GROUP_SEPARATOR)[2]


def _split_key(path: Path, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{path.name}:{path.parent.name}".encode()).digest()[:8], "big")


def split_samples(
    index: DatasetIndex, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, list[Sample]]:
    """Deterministic, per-source train/val/test split by a seeded hash of each file name.

    Each file's hash, read as a number in [0, 1), alone decides its split (below test_fraction:
    test, then val, else train), so adding images to a source never moves another image between
    splits (no test image ever leaks into training as a dataset grows). Every source is split
    with the same fractions, so sizes are proportional per source up to binomial noise.

    A dataset with its own `group_splits` is split by them instead (seed and fractions unused).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    if index.group_splits is not None:
        return split_by_group(index)
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    by_source: dict[str, list[Sample]] = {}
    for sample in index.samples:
        by_source.setdefault(sample.source, []).append(sample)
    for source in sorted(by_source):
        keyed = sorted(((_split_key(sample.path, seed), sample) for sample in by_source[source]), key=lambda pair: pair[0])
        for key, sample in keyed:
            position = key / 2**64
            name = "test" if position < test_fraction else "val" if position < test_fraction + val_fraction else "train"
            splits[name].append(sample)
    return splits


def split_off(samples: list[Sample], fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(kept, carved) with a seeded hash of each file name deciding, independent of the main split.

    A fixed `fraction` of `samples`, the same files for every caller with the same seed, e.g. the
    calibration split a node carves out of its training split. Files of a split group (the
    patches of one photograph) are carved together, so no group straddles the two parts.
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"invalid fraction {fraction} to split off")

    def key(sample: Sample) -> Path:  # a grouped file (`NNNNN-<group>`) goes with its whole group
        group = group_of(sample.path)
        return sample.path.with_name(f"group-{group}") if group else sample.path

    carved = {id(s) for s in samples if _split_key(key(s), seed + 7919) / 2**64 < fraction}
    return [s for s in samples if id(s) not in carved], [s for s in samples if id(s) in carved]


def split_by_group(index: DatasetIndex) -> dict[str, list[Sample]]:
    """Every file to its group's split (sorted by source and name); a file of no listed group is an error."""
    log.info("%s: split by the manifest's group_splits (split seed and fractions do not apply)", index.root)
    splits: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for sample in sorted(index.samples, key=lambda s: (s.source, s.path.name)):
        group = group_of(sample.path)
        if group not in index.group_splits:
            raise DatasetError(f"{sample.path}: group {group!r} is not in the manifest's group_splits")
        splits[index.group_splits[group]].append(sample)
    return splits


def load_split(config: DataConfig) -> tuple[DatasetIndex, dict[str, list[Sample]]]:
    index = scan_dataset(config)
    return index, split_samples(index, config.split_seed, config.val_fraction, config.test_fraction)


def read_model_input(
    path: Path, spec: InputSpec, perturb: PerturbConfig | None = None, rng: np.random.Generator | None = None
) -> np.ndarray:
    """One file -> model input, with the optional perturbation applied to the uint8 image."""
    rgb = load_image(path, spec.image_size)
    if perturb is not None and perturb.kinds:
        rgb = perturb_randomly(rgb, perturb, rng or np.random.default_rng())
    return to_model_input(rgb, spec)


def _was_readable(image, label, weight, ok):
    return ok


def _without_flag(image, label, weight, ok):
    return image, label, weight


def _without_weight(image, label, weight):
    return image, label


def make_tf_dataset(
    samples: list[Sample],
    labels: np.ndarray,
    spec: InputSpec,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    perturb: PerturbConfig | None = None,
    repeat: bool = False,
    weights: np.ndarray | None = None,
):
    """Streams (input, label) batches, or (input, label, weight) with per-example `weights`; files
    are decoded lazily in parallel, never all in memory.

    Unreadable files are logged with their path and dropped from the stream, not fatal. Shuffling
    and perturbations are seeded by `seed`, so a run repeats exactly.
    """
    import tensorflow as tf

    if len(samples) != len(labels):
        raise ValueError("samples and labels differ in length")
    if not samples:
        raise DatasetError("empty split: no samples to stream")
    paths = np.array([str(s.path) for s in samples])
    labels = np.asarray(labels, dtype=np.float32)
    zero = np.zeros(spec.shape, dtype=np.float32)

    def load(index: np.ndarray, draw: np.ndarray) -> tuple[np.ndarray, np.bool_]:
        path = paths[int(index)]
        try:
            rng = np.random.default_rng([seed, int(index), int(draw) & (2**63 - 1)])
            return read_model_input(Path(path), spec, perturb, rng), np.bool_(True)
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
            return zero, np.bool_(False)

    @tf.autograph.experimental.do_not_convert
    def tf_load(index, label, weight, draw):
        image, ok = tf.numpy_function(load, [index, draw], [tf.float32, tf.bool], stateful=False)
        image.set_shape(spec.shape)
        ok.set_shape(())
        return image, label, weight, ok

    weight_column = np.ones(len(paths), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), labels, weight_column))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    # Each element's perturbation draw comes from a seeded stream that changes every epoch, in element
    # order: the same run perturbs the same images the same way, however the parallel map is scheduled.
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip(dataset, draws).map(lambda element, draw: (*element, draw))
    dataset = dataset.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(_was_readable).map(_without_flag)
    if weights is None:
        dataset = dataset.map(_without_weight)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

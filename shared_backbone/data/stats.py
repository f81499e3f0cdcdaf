"""What is in a dataset: per-source counts, classes and split sizes, unreadable files, and the
DCT normstats of its training split. Everything streams over files one at a time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

from shared_backbone.config import DataConfig
from shared_backbone.data.datasets import SPLITS, load_split
from shared_backbone.model.preprocessing import ImageDecodeError, Normstats, NormstatsAccumulator, decode_image, load_image

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def find_unreadable(paths: Iterable[Path], progress: Progress | None = None) -> list[tuple[Path, str]]:
    """Fully decodes every file; returns (path, reason) for each one that is not a usable image."""
    paths = list(paths)
    bad = []
    for done, path in enumerate(paths, 1):
        try:
            decode_image(path)
        except ImageDecodeError as exc:
            bad.append((path, str(exc)))
        if progress:
            progress(done, len(paths))
    return bad


def describe_dataset(config: DataConfig, *, check: bool = True, progress: Progress | None = None) -> dict:
    """A JSON-ready summary: sources (kind, class, count, split counts), classes, split sizes and,
    with `check`, every unreadable file with its reason."""
    index, splits = load_split(config)
    split_of = {sample.path: name for name in SPLITS for sample in splits[name]}
    sources = []
    for source in index.sources:
        paths = [s.path for s in index.samples if s.source == source]
        per_split = {name: sum(1 for p in paths if split_of.get(p) == name) for name in SPLITS}
        sources.append({
            "name": source,
            "kind": "real" if index.is_real(source) else "fake",
            "class": index.class_of(source),
            "count": len(paths),
            "splits": per_split,
        })
    summary = {
        "root": str(index.root),
        "real_sources": sorted(index.real_sources),
        "arch_level": index.arch_level,
        "classes": ["real", *index.fake_classes],
        "images": len(index.samples),
        "splits": {name: len(splits[name]) for name in SPLITS},
        "split_seed": config.split_seed,
        "split_by": "file hash" if index.group_splits is None else "manifest group_splits",
        "sources": sources,
        "checked": check,
        "unreadable": [],
    }
    if check:
        bad = find_unreadable((s.path for s in index.samples), progress)
        summary["unreadable"] = [{"path": str(path), "reason": reason} for path, reason in bad]
    return summary


def compute_normstats(
    paths: Iterable[Path], image_size: int, progress: Progress | None = None
) -> tuple[Normstats, list[tuple[Path, str]]]:
    """Streaming per-coefficient mean/std of the log-DCT spectrum; unreadable files are skipped
    (logged with their path) and returned."""
    paths = list(paths)
    accumulator = NormstatsAccumulator(image_size)
    skipped = []
    for done, path in enumerate(paths, 1):
        try:
            accumulator.add(load_image(path, image_size))
        except ImageDecodeError as exc:
            log.warning("skipping unreadable image %s: %s", path, exc)
            skipped.append((path, str(exc)))
        if progress:
            progress(done, len(paths))
    if accumulator.count < 2:
        raise ValueError(f"normstats need at least 2 readable images, found {accumulator.count}")
    return accumulator.result(), skipped


def normstats_for(config: DataConfig, split: str = "train", progress: Progress | None = None) -> tuple[Normstats, int, list[tuple[Path, str]]]:
    """Normstats of one split (`train` by default, so test images never leak into them) or `all`.

    Returns (normstats, images used, unreadable files)."""
    index, splits = load_split(config)
    if split == "all":
        samples = index.samples
    elif split in SPLITS:
        samples = splits[split]
    else:
        raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
    stats, skipped = compute_normstats([s.path for s in samples], config.image_size, progress)
    return stats, len(samples) - len(skipped), skipped

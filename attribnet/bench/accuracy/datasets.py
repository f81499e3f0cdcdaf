"""The benchmark's datasets: the zoo, the independently written zoo, the upscalers, or a given folder.

`zoo_independent` is for evaluation only: besides the nodes' own images and the dataset's reals,
nothing any model trains on may come from its code. Its coordinator-role sources are therefore
not rendered by it: the coordinator renders its own generators (one seeded network of the family
its name gives, from the project's own generator space, `shared_backbone.data.negatives`) from
the dataset's train and validation reals, and the benchmark reads a folder that links both.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

from PIL import Image

from attribnet.bench.accuracy.config import AccuracyConfig, resolved_roles
from attribnet.bench.accuracy.bench_data import family_of
from attribnet.lab.datasets.zoo import MANIFEST_FILE, read_manifest, stable_int, zoo_data_config
from shared_backbone.config import DataConfig
from shared_backbone.data.datasets import load_split
from shared_backbone.data.negatives import NegativeSettings, make_negatives
from shared_backbone.model.preprocessing import load_image

log = logging.getLogger(__name__)

COORDINATOR_STRENGTH = (0.01, 0.01)  # as far from interpolation as the zoo's benchmark fingerprints
DONE = ".complete"


def dataset(config: AccuracyConfig, workdir: Path, step: Callable[[str], None]) -> DataConfig:
    """The zoo, independent zoo or upscalers dataset (written, or reused when identical), or the given folder."""
    if config.dataset == "folder":
        if not config.data.root:
            raise ValueError("dataset: folder needs data.root (a folder with one sub-folder per source)")
        return config.data
    if config.dataset == "zoo":
        from attribnet.lab.datasets.zoo import settings_from_config, write_zoo

        settings = settings_from_config(config.zoo)
        step(f"fingerprint zoo: {len(settings.sources) + 1} sources x {settings.per_source} images, {settings.image_size} px")
        write_zoo(workdir / "zoo", settings, workers=config.zoo.workers)
        root = workdir / "zoo"
    elif config.dataset == "zoo_independent":
        root = independent_zoo(config, workdir, step)
    elif config.dataset == "upscalers":
        from attribnet.lab.datasets import upscalers

        settings = upscalers.settings_from_config(config.upscalers)
        step(f"upscalers: {len(settings.sources) + 1} sources x {settings.per_source} images, {settings.image_size} px")
        upscalers.write_upscalers(workdir / "upscalers", settings, workers=config.upscalers.workers)
        root = workdir / "upscalers"
    else:
        raise ValueError(f"dataset must be zoo, zoo_independent, upscalers or folder, got {config.dataset!r}")
    return zoo_data_config(root, mode=config.data.mode, split_seed=config.data.split_seed)


def independent_zoo(config: AccuracyConfig, workdir: Path, step: Callable[[str], None]) -> Path:
    """WORKDIR/zoo_independent-bench: links to the independent zoo's reals, nodes and held-out
    generators, and the coordinator's own generators rendered from its train and validation reals."""
    from attribnet.lab.datasets.zoo_independent import write_independent_zoo

    roles = resolved_roles(config.dataset, config.roles)
    written = [s for s in config.zoo.sources if s not in roles.coordinator]
    step(f"independent zoo: {len(written) + 1} sources x {config.zoo.per_source} images, {config.zoo.image_size} px; "
         f"coordinator's own generators {', '.join(roles.coordinator)}")
    zoo = workdir / "zoo_independent"
    write_independent_zoo(zoo, image_size=config.zoo.image_size, per_source=config.zoo.per_source, seed=config.zoo.seed,
                          sources=written, strength=config.zoo.strength or None, easy=config.zoo.preset == "easy")
    root = workdir / "zoo_independent-bench"
    root.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(zoo)
    for source in [*manifest["real_sources"], *written]:
        if not (root / source).exists():
            (root / source).symlink_to((zoo / source).resolve(), target_is_directory=True)
    reals = train_reals(zoo_data_config(zoo, split_seed=config.data.split_seed), config.zoo.image_size)
    for source in roles.coordinator:
        render_coordinator_source(root / source, source, reals, config.zoo.per_source)
    described = {s: {"kind": "coordinator's own generator", "code": "shared_backbone.data.negatives", "family": family_of(s)}
                 for s in roles.coordinator}
    combined = {**manifest, "sources": {**manifest.get("sources", {}), **described}, "independent_zoo": str(zoo.resolve())}
    (root / MANIFEST_FILE).write_text(json.dumps(combined, indent=2, sort_keys=True) + "\n")
    return root


def train_reals(data: DataConfig, size: int) -> list:
    """The dataset's real images outside its test split: what the coordinator renders its fakes from."""
    index, splits = load_split(data)
    return [load_image(s.path, size) for name in ("train", "val") for s in splits[name] if index.is_real(s.source)]


def render_coordinator_source(folder: Path, source: str, reals: list, count: int) -> None:
    """`count` images of one coordinator generator (a network of the family its name gives, seeded by its name)."""
    if (folder / DONE).is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = NegativeSettings(count=count, generators=1, strength=COORDINATOR_STRENGTH, seed=stable_int(source) % 2**31,
                                families=(family_of(source),))
    for number, rgb in enumerate(make_negatives(reals, settings)):
        Image.fromarray(rgb).save(folder / f"{number:05d}.png")
    (folder / DONE).write_text("")

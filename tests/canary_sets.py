"""The coordinator's audit data for tests: members' deposited audit sets and reals no node received."""

from __future__ import annotations

from pathlib import Path


def _test_split(zoo: Path):
    from attribnet.lab.datasets.zoo import zoo_data_config
    from shared_backbone.data.datasets import load_split

    return load_split(zoo_data_config(zoo))


def deposit_folder(zoo: Path, out: Path, sources: list[str], extra: dict[str, str] | None = None) -> Path:
    """The members' private audit sets deposited with the coordinator: each member's test-split images
    (its head never trained or calibrated on them, as a member should deposit), plus for each
    `extra` deposit name every image of the zoo source it maps to."""
    _, splits = _test_split(zoo)
    for source in sources:
        (out / source).mkdir(parents=True)
        for sample in splits["test"]:
            if sample.source == source:
                (out / source / sample.path.name).symlink_to(sample.path)
    for name, source in (extra or {}).items():
        (out / name).mkdir(parents=True)
        for image in sorted((zoo / source).glob("*.png")):
            (out / name / image.name).symlink_to(image)
    return out


def private_reals(zoo: Path, out: Path) -> Path:
    """The coordinator's reals that no node received: the zoo's test split (the reference set leaves it out)."""
    index, splits = _test_split(zoo)
    out.mkdir(parents=True)
    for sample in splits["test"]:
        if index.is_real(sample.source):
            (out / sample.path.name).symlink_to(sample.path)
    return out

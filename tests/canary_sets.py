"""The coordinator's audit data for tests: members' deposited audit sets and reals no node received."""

from __future__ import annotations

from pathlib import Path


def deposit_folder(zoo: Path, out: Path, sources: list[str], per_source: int = 12) -> Path:
    """The members' private audit sets deposited with the coordinator: the last images of each member's source."""
    for source in sources:
        (out / source).mkdir(parents=True)
        for image in sorted((zoo / source).glob("*.png"))[-per_source:]:
            (out / source / image.name).symlink_to(image)
    return out


def private_reals(zoo: Path, out: Path) -> Path:
    """The coordinator's reals that no node received: the zoo's test split (the reference set leaves it out)."""
    from attribnet.lab.datasets.zoo import zoo_data_config
    from shared_backbone.data.datasets import load_split

    index, splits = load_split(zoo_data_config(zoo))
    out.mkdir(parents=True)
    for sample in splits["test"]:
        if index.is_real(sample.source):
            (out / sample.path.name).symlink_to(sample.path)
    return out

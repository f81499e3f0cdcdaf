"""Data fixtures shared by every test (tiny zoo, key pair)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_backbone.config import DataConfig
from attribnet.lab.datasets.zoo import quick_settings, write_zoo, zoo_data_config
from shared_backbone.model.signing import generate_keypair

TINY_ZOO_SIZE = 32
TINY_ZOO_PER_SOURCE = 80
TINY_ZOO_SEED = 7

__all__ = ["TINY_ZOO_SIZE", "TINY_ZOO_PER_SOURCE", "TINY_ZOO_SEED", "tiny_zoo", "tiny_zoo_config", "keypair", "zoo_data_config"]


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px zoo, 80 images per source (`real` + 5 generators of 4 architectures); read-only.

    It uses the easy `quick_settings` (strong fingerprints, reals sharper than fakes) so a
    detector trained for seconds is clearly better than chance; the benchmark zoo is harder.
    """
    root = tmp_path_factory.mktemp("data") / "tiny_zoo"
    settings = quick_settings(image_size=TINY_ZOO_SIZE, per_source=TINY_ZOO_PER_SOURCE, seed=TINY_ZOO_SEED)
    write_zoo(root, settings, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_zoo_config(tiny_zoo: Path) -> DataConfig:
    """DataConfig for `tiny_zoo` (real source `real`, 32 px); copy with dataclasses.replace to change it."""
    return zoo_data_config(tiny_zoo)


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private_key_path, public_key_path) of a fresh Ed25519 coordinator key."""
    return generate_keypair(tmp_path_factory.mktemp("keys"))

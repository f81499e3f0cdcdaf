"""Model fixtures shared by every test: a signed bundle and one head per generator, on tiny_zoo."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig
from node.config import NegativesConfig, NodeConfig
from shared_backbone.config import TrainConfig

__all__ = ["FIXTURE_TRAIN", "HEAD_NEGATIVES", "zoo_primary_run", "zoo_reference", "zoo_bundle", "zoo_heads"]

# Measured on tiny_zoo (easy preset, 80 images per source): 20 epochs of batch 16 at lr 3e-3 give a
# detector with test AUC 0.99-1.00 over 3 seeds in ~17 s. With 40 per source (5 real validation
# images) the validation loss was noise and test AUC ranged 0.65-0.92 over seeds; 8 epochs of
# batch 32 left it constant ("fake" for all), which tests must catch.
FIXTURE_TRAIN = TrainConfig(epochs=20, batch_size=16, learning_rate=3e-3, patience=5, min_epochs=3, seed=1)
HEAD_TRAIN = dataclasses.replace(FIXTURE_TRAIN, epochs=20, patience=4)  # on cached trunk features: seconds
# A third of the default: making and featurising negatives was most of a fixture head's time.
HEAD_NEGATIVES = NegativesConfig(count=400)


@pytest.fixture(scope="session")
def zoo_primary_run(tiny_zoo, tmp_path_factory: pytest.TempPathFactory):
    """A primary module trained briefly on tiny_zoo (PrimaryTrainingResult; run folder read-only)."""
    from coordinator.train_primary import train_primary
    from attribnet.lab.datasets.zoo import zoo_data_config

    config = CoordinatorConfig(
        data=zoo_data_config(tiny_zoo),
        train=FIXTURE_TRAIN,
        run_dir=str(tmp_path_factory.mktemp("primary") / "run"),
    )
    return train_primary(config, progress=False)


@pytest.fixture(scope="session")
def zoo_reference(tiny_zoo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The coordinator's reference set for tiny_zoo: its real images, test split left out (read-only)."""
    from coordinator.reference import write_reference_set
    from attribnet.lab.datasets.zoo import zoo_data_config

    out = tmp_path_factory.mktemp("reference") / "reference"
    write_reference_set(zoo_data_config(tiny_zoo), out)
    return out


@pytest.fixture(scope="session")
def zoo_bundle(zoo_primary_run, zoo_reference, keypair, tmp_path_factory: pytest.TempPathFactory):
    """The published, signed bundle of zoo_primary_run (announcing zoo_reference), loaded back verified."""
    from coordinator.publish import publish
    from shared_backbone.model.bundle import load_bundle
    from shared_backbone.model.signing import load_public_key

    private_key, public_key = keypair
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    publish(zoo_primary_run.run_dir, out, private_key, version="test-1", reference=zoo_reference)
    return load_bundle(out, load_public_key(public_key))


@pytest.fixture(scope="session")
def zoo_heads(zoo_bundle, zoo_reference, tiny_zoo, keypair, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """source -> head folder, one head per zoo generator, each trained by node.train_head (strict access:
    own images, the reference set, self-made negatives; the zoo's other folders are ignored)."""
    from node.train_head import train_head
    from attribnet.lab.datasets.zoo import read_manifest, zoo_data_config, zoo_sources

    root = tmp_path_factory.mktemp("heads")
    heads = {}
    manifest = read_manifest(tiny_zoo)
    for source in [s for s in zoo_sources(manifest) if s not in manifest["real_sources"]]:
        config = NodeConfig(
            source=source,
            data=zoo_data_config(tiny_zoo),
            train=HEAD_TRAIN,
            negatives=HEAD_NEGATIVES,
            backbone=str(zoo_bundle.path),
            public_key=str(keypair[1]),
            reference=str(zoo_reference),
            state_dir=str(root / source),
        )
        heads[source] = train_head(config, progress=False).head_dir
    return heads

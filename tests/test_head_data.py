"""Who sees what: a node trains on its own images, public reals, the verified reference set, nothing else."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest

from node.config import NodeConfig
from node.head_data import DataAccessError, head_data
from shared_backbone.data.reference_set import ReferenceSetError
from attribnet.lab.datasets.zoo import zoo_data_config


def _config(tiny_zoo: Path, reference: Path, **changes) -> NodeConfig:
    return dataclasses.replace(NodeConfig(source="tconv_a", data=zoo_data_config(tiny_zoo), reference=str(reference)), **changes)


def test_strict_access_ignores_other_generators_and_says_so(tiny_zoo, zoo_reference, zoo_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="node.head_data"):
        data = head_data(_config(tiny_zoo, zoo_reference), zoo_bundle)
    seen = {s.source for split in data.negatives.values() for s in split} | {s.source for split in data.positives.values() for s in split}
    assert seen == {"tconv_a", "real"}  # own images, local public reals and the reference set's reals
    assert sorted(data.report["ignored_local_sources"]) == ["bilinear_a", "nnconv_a", "pixshuffle_a", "tconv_b"]
    assert data.report["access"] == "strict" and data.report["local_negative_sources"] == ["real"]
    assert "strict access ignores them" in caplog.text and "tconv_b" in caplog.text


def test_shared_access_is_the_papers_opt_in(tiny_zoo, zoo_reference, zoo_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="node.head_data"):
        data = head_data(_config(tiny_zoo, zoo_reference, access="shared"), zoo_bundle)
    negatives = {s.source for split in data.negatives.values() for s in split}
    assert negatives == {"real", "tconv_b", "nnconv_a", "bilinear_a", "pixshuffle_a"}
    assert "access shared" in caplog.text


def test_splits_are_disjoint_and_calibration_is_carved_from_train(tiny_zoo, zoo_reference, zoo_bundle):
    data = head_data(_config(tiny_zoo, zoo_reference), zoo_bundle)
    names = {split: {s.path for s in data.positives[split] + data.negatives[split]} for split in data.positives}
    splits = list(names)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not names[a] & names[b], (a, b)
    assert all(data.positives[split] for split in splits)
    assert len(data.positives["calib"]) < len(data.positives["train"])


def test_a_reference_set_must_match_the_announced_digest(tiny_zoo, zoo_reference, zoo_bundle, tmp_path):
    tampered = tmp_path / "reference"
    shutil.copytree(zoo_reference, tampered)
    victim = sorted((tampered / "real").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[::-1])
    with pytest.raises(ReferenceSetError, match="differs"):
        head_data(_config(tiny_zoo, tampered), zoo_bundle)


def test_an_unannounced_reference_set_is_refused(tiny_zoo, zoo_reference, zoo_bundle):
    unannounced = dataclasses.replace(zoo_bundle, manifest={**zoo_bundle.manifest, "reference": None})
    with pytest.raises(DataAccessError, match="announces no reference set"):
        head_data(_config(tiny_zoo, zoo_reference), unannounced)
    digest = zoo_bundle.manifest["reference"]["digest"]  # the Flower run may announce it instead
    assert head_data(_config(tiny_zoo, zoo_reference), unannounced, announced_reference_digest=digest).negatives["train"]


def test_unknown_access_modes_and_missing_sources_are_refused(tiny_zoo, zoo_reference, zoo_bundle):
    with pytest.raises(DataAccessError, match="access must be one of"):
        head_data(_config(tiny_zoo, zoo_reference, access="everything"), zoo_bundle)
    with pytest.raises(DataAccessError, match="no folder for source 'stylegan'"):
        head_data(_config(tiny_zoo, zoo_reference, source="stylegan"), zoo_bundle)

"""The importer on the paper's own HDF5 files: exact arrays, sizes/modes, binding and refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from attribnet.cli import main
from coordinator.import_weights import import_paper_weights
from node.import_head import import_paper_head
from shared_backbone.model import paper_weights
from shared_backbone.model import bundle as bundle_lib
from shared_backbone.model import heads, signing
from tests.paper_reference import NORMSTATS, PAPER, hdf5_arrays, requires_paper_weights

pytestmark = requires_paper_weights


def model_arrays(model) -> dict[tuple[str, str], np.ndarray]:
    return {
        (layer.name, variable.path.rsplit("/", 1)[-1]): np.asarray(variable.numpy())
        for layer in model.layers
        for variable in layer.weights
    }


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    private, public = signing.generate_keypair(tmp_path_factory.mktemp("keys"))
    return private, public


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    """The three primary modules as signed bundles (pixel 128, DCT 128, pixel 256)."""
    root = tmp_path_factory.mktemp("bundles")
    return {
        "pixel": import_paper_weights(PAPER / "primary_ganfp_aug.h5", root / "pixel", keys[0]),
        "dct": import_paper_weights(
            PAPER / "primary_ganfp_dct_aug.h5", root / "dct", keys[0], normstats_dir=NORMSTATS
        ),
        "faces": import_paper_weights(PAPER / "primary_faceshqp_aug.h5", root / "faces", keys[0]),
    }


@pytest.mark.parametrize(
    "name, size, mode, kind, pooling",
    [
        ("primary_ganfp_aug.h5", 128, "pixel", "primary", None),
        ("primary_ganfp_dct_aug.h5", 128, "dct", "primary", None),
        ("primary_faceshqp_aug.h5", 256, "pixel", "primary", None),
        ("attribution_ganfp_progan.h5", 128, "pixel", "attribution", "gap"),
        ("attribution_ganfp_cramergan_dct.h5", 128, "dct", "attribution", "flatten"),
        ("attribution_faceshqp_stylegan2.h5", 256, "pixel", "attribution", "gap"),
    ],
)
def test_model_config_is_read(name, size, mode, kind, pooling):
    paper = paper_weights.read_paper_model(PAPER / name)
    assert (paper.image_size, paper.mode, paper.kind, paper.head_pooling) == (size, mode, kind, pooling)
    assert paper.sha256 == hashlib.sha256((PAPER / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("which, file", [("pixel", "primary_ganfp_aug.h5"), ("dct", "primary_ganfp_dct_aug.h5"), ("faces", "primary_faceshqp_aug.h5")])
def test_bundle_weights_equal_the_hdf5_arrays(bundles, keys, which, file):
    published = bundle_lib.load_bundle(bundles[which].path, signing.load_public_key(keys[1]))
    expected = hdf5_arrays(PAPER / file)
    loaded = model_arrays(published.load_primary())
    assert set(loaded) == set(expected)
    for key, array in expected.items():
        np.testing.assert_array_equal(loaded[key], array, err_msg=str(key))
    source = published.manifest["source"]
    assert source["file"] == file
    assert source["sha256"] == hashlib.sha256((PAPER / file).read_bytes()).hexdigest()
    assert published.manifest["input"]["image_size"] == (256 if which == "faces" else 128)
    assert published.manifest["input"]["mode"] == ("dct" if which == "dct" else "pixel")


@pytest.mark.parametrize(
    "which, file, source",
    [
        ("pixel", "attribution_ganfp_progan.h5", "progan_celeba"),
        ("pixel", "attribution_ganfp_cramergan.h5", "cramergan_celeba"),
        ("dct", "attribution_ganfp_progan_dct.h5", "progan_celeba"),
        ("dct", "attribution_ganfp_cramergan_dct.h5", "cramergan_celeba"),
        ("faces", "attribution_faceshqp_tpdne.h5", "stylegan_tpdne"),
        ("faces", "attribution_faceshqp_stylegan2.h5", "stylegan2_tpdne"),
    ],
)
def test_head_binds_to_its_own_trunk(tmp_path, bundles, keys, which, file, source):
    head = import_paper_head(PAPER / file, bundles[which].path, source, tmp_path / "head", public_key_path=keys[1])
    assert head.backbone_digest == bundles[which].digest
    reloaded = heads.load_head(tmp_path / "head", bundles[which])
    expected = {key: a for key, a in hdf5_arrays(PAPER / file).items() if key[0].startswith("a")}
    loaded = model_arrays(reloaded.model)
    assert set(loaded) == set(expected)
    for key, array in expected.items():
        np.testing.assert_array_equal(loaded[key], array, err_msg=str(key))
    assert reloaded.calibration.method == "identity"


def test_pixel_head_refused_by_dct_backbone(tmp_path, bundles):
    with pytest.raises(paper_weights.PaperWeightsError, match=r"not trained on backbone .*dConv_01/kernel"):
        import_paper_head(PAPER / "attribution_ganfp_progan.h5", bundles["dct"].path, "progan", tmp_path / "head")
    assert not (tmp_path / "head").exists()


def test_256px_head_refused_by_128px_backbone(tmp_path, bundles):
    with pytest.raises(paper_weights.PaperWeightsError, match=r"256px input, the backbone pixel 128px"):
        import_paper_head(PAPER / "attribution_faceshqp_tpdne.h5", bundles["pixel"].path, "tpdne", tmp_path / "head")


def test_trunk_difference_names_the_layer(tmp_path, keys):
    """Same size and mode, one trunk array changed: the refusal names exactly that variable."""
    primary, spec, paper = paper_weights.import_primary(PAPER / "primary_ganfp_aug.h5")
    variable = primary.get_layer("dBNorm_03").moving_mean
    variable.assign(variable.numpy() + 0.5)
    altered = bundle_lib.write_bundle(
        tmp_path / "altered", primary, spec, signing.load_private_key(keys[0]), version="altered"
    )
    with pytest.raises(paper_weights.PaperWeightsError, match=r"differ at dBNorm_03/moving_mean \(max \|diff\| 0.5\)$"):
        paper_weights.import_head(PAPER / "attribution_ganfp_progan.h5", altered)


def test_tail_is_not_part_of_the_binding(tmp_path, keys):
    """Only the shared trunk binds a head: a retrained primary tail keeps the head valid."""
    primary, spec, _ = paper_weights.import_primary(PAPER / "primary_ganfp_aug.h5")
    primary.get_layer("dDecision").bias.assign(np.array([3.0], dtype=np.float32))
    retailed = bundle_lib.write_bundle(
        tmp_path / "tail", primary, spec, signing.load_private_key(keys[0]), version="tail"
    )
    model, _ = paper_weights.import_head(PAPER / "attribution_ganfp_progan.h5", retailed)
    assert model.get_layer("aDecision").kernel.shape == (32, 1)


def test_dct_primary_needs_normstats(tmp_path):
    with pytest.raises(paper_weights.PaperWeightsError, match="needs the normstats"):
        paper_weights.import_primary(PAPER / "primary_ganfp_dct_aug.h5")


def test_wrong_file_kinds_are_refused(tmp_path, bundles):
    with pytest.raises(paper_weights.PaperWeightsError, match="import-paper-head"):
        paper_weights.import_primary(PAPER / "attribution_ganfp_progan.h5")
    with pytest.raises(paper_weights.PaperWeightsError, match="import-paper-weights"):
        paper_weights.import_head(PAPER / "primary_ganfp_aug.h5", bundles["pixel"])
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not a model")
    with pytest.raises(paper_weights.PaperWeightsError, match="not an HDF5 file"):
        paper_weights.read_paper_model(not_hdf5)


def test_cli_keygen_import_inspect_and_refusals(tmp_path, capsys):
    keys_dir = tmp_path / "keys"
    assert main(["coordinator", "keygen", "--out", str(keys_dir)]) == 0
    assert main(["coordinator", "keygen", "--out", str(keys_dir)]) == 2
    assert "already exists" in capsys.readouterr().err

    key, pub = str(keys_dir / "coordinator.key"), str(keys_dir / "coordinator.pub")
    dct_file = str(PAPER / "primary_ganfp_dct_aug.h5")
    assert main(["coordinator", "import-paper-weights", dct_file, "--out", str(tmp_path / "b0"), "--key", key]) == 2
    err = capsys.readouterr().err.strip()
    assert "normstats" in err and len(err.splitlines()) == 1 and not (tmp_path / "b0").exists()

    args = ["coordinator", "import-paper-weights", dct_file, "--out", str(tmp_path / "b"), "--key", key]
    assert main(args + ["--normstats", str(NORMSTATS), "--version", "v-dct", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] == "v-dct" and summary["input"]["mode"] == "dct"
    assert summary["source"]["sha256"] == hashlib.sha256(Path(dct_file).read_bytes()).hexdigest()

    assert main(["coordinator", "inspect-bundle", str(tmp_path / "b"), "--public-key", pub, "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["digest"] == summary["digest"] and inspected["signature_verified"] is True

    head_args = ["node", "import-paper-head", "--backbone", str(tmp_path / "b"), "--public-key", pub]
    assert main(head_args + [str(PAPER / "attribution_ganfp_progan.h5"), "--source", "progan", "--out", str(tmp_path / "h1")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dConv_01/kernel" in err and not (tmp_path / "h1").exists()
    assert main(head_args + [str(PAPER / "attribution_ganfp_progan_dct.h5"), "--source", "progan", "--out", str(tmp_path / "h2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone_digest"] == summary["digest"]

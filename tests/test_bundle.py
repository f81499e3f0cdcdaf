"""The backbone bundle and head binding: round trips, and every kind of tampering refused with a clear message."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from attribnet.cli import main
from shared_backbone.model import bundle as bundle_lib
from shared_backbone.model import heads, networks, signing
from shared_backbone.model.attributor import OfflineAttributor
from shared_backbone.model.calibration import Calibration
from shared_backbone.model.preprocessing import InputSpec, Normstats

SIZE = 32


def randomised(model, seed: int):
    """Distinct, non-default values in every variable (incl. BatchNorm statistics), so a round trip is meaningful."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0, 0.1, variable.shape)
        if "moving_variance" in variable.path:
            values = np.abs(values) + 0.5
        variable.assign(values.astype(np.float32))
    return model


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    private, public = signing.generate_keypair(root / "coordinator")
    _, other_public = signing.generate_keypair(root / "other")
    return {"private": signing.load_private_key(private), "public": signing.load_public_key(public),
            "public_path": public, "other": signing.load_public_key(other_public), "other_path": other_public}


@pytest.fixture(scope="module")
def primary():
    return randomised(networks.build_primary(SIZE, "pixel"), 0)


@pytest.fixture
def published(tmp_path, keys, primary):
    return bundle_lib.write_bundle(
        tmp_path / "bundle", primary, InputSpec(SIZE), keys["private"], version="v1", metrics={"auc": 0.9}
    )


def flip_byte(path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    position = len(data) // 2 if offset is None else offset
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip(published, keys, primary):
    loaded = bundle_lib.load_bundle(published.path, keys["public"])
    assert loaded.signed and loaded.digest == published.digest and loaded.version == "v1"
    assert loaded.manifest["metrics"] == {"auc": 0.9}
    assert loaded.input_spec == InputSpec(SIZE)
    restored = loaded.load_primary()
    for ours, theirs in zip(primary.weights, restored.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    assert oct(published.path.stat().st_mode & 0o777) == oct(0o755)


def test_dct_round_trip_keeps_normstats(tmp_path, keys):
    rng = np.random.default_rng(1)
    normstats = Normstats(mean=rng.normal(0, 1, (SIZE, SIZE)), std=rng.random((SIZE, SIZE)) + 0.1)
    dct = randomised(networks.build_primary(SIZE, "dct"), 2)
    written = bundle_lib.write_bundle(tmp_path / "dct", dct, InputSpec(SIZE, "dct", normstats), keys["private"], version="d1")
    spec = bundle_lib.load_bundle(written.path, keys["public"]).input_spec
    np.testing.assert_array_equal(spec.normstats.mean, normstats.mean)
    np.testing.assert_array_equal(spec.normstats.std, normstats.std)
    flip_byte(written.path / "normstats" / "std_dev.npy", offset=-3)
    with pytest.raises(bundle_lib.BundleError, match=r"normstats/std_dev.npy has sha256 .*tampered"):
        bundle_lib.load_bundle(written.path, keys["public"])


def test_flipped_weight_byte_refused(published, keys):
    flip_byte(published.path / bundle_lib.WEIGHTS)
    with pytest.raises(bundle_lib.BundleError, match=r"primary.weights.h5 has sha256 .*tampered"):
        bundle_lib.load_bundle(published.path, keys["public"])
    with pytest.raises(bundle_lib.BundleError, match="tampered"):  # digests are checked even without a key
        bundle_lib.load_bundle(published.path, None)


def test_flipped_manifest_byte_refused(published, keys):
    manifest = published.path / bundle_lib.MANIFEST
    text = manifest.read_text()
    flip_byte(manifest, offset=text.index('"v1"') + 2)  # "v1" -> "v0": still valid JSON
    with pytest.raises(bundle_lib.BundleError, match="signature does not verify"):
        bundle_lib.load_bundle(published.path, keys["public"])


def test_missing_signature_refused(published, keys):
    (published.path / bundle_lib.SIGNATURE).unlink()
    with pytest.raises(bundle_lib.BundleError, match=r"unsigned bundle \(manifest.sig missing\)"):
        bundle_lib.load_bundle(published.path, keys["public"])
    assert not bundle_lib.load_bundle(published.path, None).signed


def test_signature_by_another_key_refused(published, keys):
    with pytest.raises(bundle_lib.BundleError, match="signature does not verify with the configured public key"):
        bundle_lib.load_bundle(published.path, keys["other"])


def test_a_configured_bundle_that_does_not_verify_names_the_key_file(published, keys):
    """The operator learns which key was tried, not only that something did not verify."""
    with pytest.raises(bundle_lib.BundleError) as refused:
        bundle_lib.load_configured_bundle(str(published.path), str(keys["other_path"]))
    message = str(refused.value)
    assert "signature does not verify" in message and str(keys["other_path"]) in message and "\n" not in message
    assert bundle_lib.load_configured_bundle(str(published.path), str(keys["public_path"])).signed


def test_broken_bundles_refused(tmp_path, published, keys, primary):
    with pytest.raises(bundle_lib.BundleError, match="not a backbone bundle"):
        bundle_lib.load_bundle(tmp_path / "nowhere", None)
    (published.path / bundle_lib.WEIGHTS).unlink()
    with pytest.raises(bundle_lib.BundleError, match="primary.weights.h5 listed in the manifest is missing"):
        bundle_lib.load_bundle(published.path, keys["public"])
    for payload, message in ((b"[1, 2]", "unknown bundle format"), (b"{oops", "invalid JSON"), (b"{\"a\": \"\xff\"}", "not UTF-8")):
        (published.path / bundle_lib.MANIFEST).write_bytes(payload)
        with pytest.raises(bundle_lib.BundleError, match=message):
            bundle_lib.load_bundle(published.path, None)
    with pytest.raises(bundle_lib.BundleError, match="exists and is not empty"):
        bundle_lib.write_bundle(published.path, primary, InputSpec(SIZE), keys["private"], version="v2")


def test_cli_inspect_reports_tampering_in_one_line(published, keys, capsys):
    assert main(["coordinator", "inspect-bundle", str(published.path), "--public-key", str(keys["public_path"])]) == 0
    out = capsys.readouterr().out
    assert published.digest in out and "verified" in out
    flip_byte(published.path / bundle_lib.WEIGHTS)
    assert main(["coordinator", "inspect-bundle", str(published.path), "--public-key", str(keys["public_path"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tampered" in err


@pytest.mark.parametrize("pooling", ["gap", "flatten"])
def test_head_round_trip_and_binding(tmp_path, published, keys, primary, pooling):
    head_model = randomised(heads.build_head_model(SIZE, pooling), 3)
    calibration = Calibration("platt", 1.5, -0.2)
    heads.save_head(tmp_path / "head", head_model, source="progan", bundle=published, calibration=calibration, threshold=0.7)
    loaded = heads.load_head(tmp_path / "head", published)
    assert (loaded.source, loaded.calibration, loaded.threshold) == ("progan", calibration, 0.7)
    features = np.random.default_rng(4).random((2, *networks.feature_shape(SIZE))).astype(np.float32)
    np.testing.assert_allclose(loaded.raw_scores(features), np.asarray(head_model(features))[:, 0], rtol=1e-6)

    other = bundle_lib.write_bundle(tmp_path / "other", randomised(networks.build_primary(SIZE), 5), InputSpec(SIZE), keys["private"], version="v9")
    with pytest.raises(heads.HeadError, match=rf"trained on backbone {published.digest[:12]}, not on {other.short_digest}"):
        heads.load_head(tmp_path / "head", other)
    with pytest.raises(ValueError, match="belongs to backbone"):
        OfflineAttributor(other, [loaded])

    meta = json.loads((tmp_path / "head" / heads.HEAD_META).read_text())
    assert meta["pooling"] == pooling and meta["backbone_digest"] == published.digest
    flip_byte(tmp_path / "head" / heads.HEAD_WEIGHTS)
    with pytest.raises(heads.HeadError, match="does not match its recorded sha256"):
        heads.load_head(tmp_path / "head", published)


def test_attributor_refuses_duplicate_sources(tmp_path, published):
    for name in ("a", "b"):
        heads.save_head(tmp_path / name, heads.build_head_model(SIZE), source="same", bundle=published, calibration=Calibration())
    loaded = [heads.load_head(tmp_path / name, published) for name in ("a", "b")]
    with pytest.raises(ValueError, match="two heads claim the same source: 'same'"):
        OfflineAttributor(published, loaded)


def test_copied_bundle_keeps_its_digest(tmp_path, published, keys):
    """Content addressing: the digest names the content, not the folder."""
    copy = tmp_path / "copy"
    shutil.copytree(published.path, copy)
    assert bundle_lib.load_bundle(copy, keys["public"]).digest == published.digest

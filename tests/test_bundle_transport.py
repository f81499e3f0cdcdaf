"""A bundle carried in Flower records is rebuilt byte-identical and refused when tampered with."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Message, Metadata, RecordDict

from shared_backbone.data import reference_set
from shared_backbone.model import signing
from shared_backbone.model.bundle import MANIFEST, SIGNATURE, WEIGHTS, BundleError, load_bundle
from shared_backbone.protocol import flower_messages


def _packed(zoo_bundle) -> RecordDict:
    return flower_messages.pack_bundle(zoo_bundle)


def test_round_trip_is_byte_identical_and_verified(zoo_bundle, keypair, tmp_path):
    content = _packed(zoo_bundle)
    assert set(content.array_records[flower_messages.FILES_RECORD]) == set(zoo_bundle.manifest["files"])
    received = flower_messages.unpack_bundle(content, tmp_path / "cache", signing.load_public_key(keypair[1]))
    assert received.digest == zoo_bundle.digest and received.signed
    assert received.path == tmp_path / "cache" / zoo_bundle.digest
    for name in [*zoo_bundle.manifest["files"], MANIFEST, SIGNATURE]:
        assert (received.path / name).read_bytes() == (zoo_bundle.path / name).read_bytes()
    again = flower_messages.unpack_bundle(_packed(zoo_bundle), tmp_path / "cache", signing.load_public_key(keypair[1]))
    assert again.path == received.path


def test_tampered_weights_are_refused(zoo_bundle, keypair, tmp_path):
    content = _packed(zoo_bundle)
    files = content.array_records[flower_messages.FILES_RECORD]
    data = files[WEIGHTS].numpy().copy()
    data[len(data) // 2] ^= 0xFF
    files[WEIGHTS] = Array(data)
    with pytest.raises(BundleError, match="sha256"):
        flower_messages.unpack_bundle(content, tmp_path / "cache", signing.load_public_key(keypair[1]))
    assert not (tmp_path / "cache" / zoo_bundle.digest).exists()


def test_other_key_and_missing_signature_are_refused(zoo_bundle, tmp_path):
    _, other_public = signing.generate_keypair(tmp_path / "other")
    with pytest.raises(BundleError, match="signature does not verify"):
        flower_messages.unpack_bundle(_packed(zoo_bundle), tmp_path / "cache", signing.load_public_key(other_public))
    content = _packed(zoo_bundle)
    meta = dict(content.config_records[flower_messages.META_RECORD])
    meta["signature"] = b""
    content[flower_messages.META_RECORD] = ConfigRecord(meta)
    with pytest.raises(BundleError, match="unsigned"):
        flower_messages.unpack_bundle(content, tmp_path / "cache", signing.load_public_key(other_public))
    assert not list(tmp_path.rglob(WEIGHTS)), "a refused bundle leaves no files behind"


def test_extra_or_path_escaping_files_are_refused(zoo_bundle, keypair, tmp_path):
    content = _packed(zoo_bundle)
    content.array_records[flower_messages.FILES_RECORD]["../evil.py"] = Array(np.frombuffer(b"x", dtype=np.uint8))
    with pytest.raises(BundleError, match="not listed in the signed manifest"):
        flower_messages.unpack_bundle(content, tmp_path / "cache", signing.load_public_key(keypair[1]))
    assert not (tmp_path / "evil.py").exists()


def test_reference_pointer_detects_changed_content(tmp_path):
    root = tmp_path / "reference" / "real"
    root.mkdir(parents=True)
    (root / "a.png").write_bytes(b"one")
    digest = reference_set.folder_digest(tmp_path / "reference")
    assert reference_set.verify_reference(tmp_path / "reference", digest) == tmp_path / "reference"
    (root / "b.png").write_bytes(b"two")
    with pytest.raises(reference_set.ReferenceSetError, match="differs"):
        reference_set.verify_reference(tmp_path / "reference", digest)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "real").symlink_to(root, target_is_directory=True)
    assert reference_set.folder_digest(linked) == reference_set.folder_digest(tmp_path / "reference")
    with pytest.raises(reference_set.ReferenceSetError, match="not found"):
        reference_set.folder_digest(tmp_path / "missing")


def test_client_app_refuses_a_tampered_bundle(zoo_bundle, keypair, tmp_path):
    """The real ClientApp, called as Flower calls it, answers a forged bundle with an error reply."""
    from coordinator.flower.head_round import fit_head_content
    from node.client_app import make_client_app
    from shared_backbone.config import TrainConfig

    forged = tmp_path / "forged"
    shutil.copytree(zoo_bundle.path, forged)
    other_private, _ = signing.generate_keypair(tmp_path / "attacker")
    manifest = (forged / MANIFEST).read_bytes()
    (forged / SIGNATURE).write_bytes(signing.sign(signing.load_private_key(other_private), manifest))
    forged_bundle = load_bundle(forged, None)
    state = tmp_path / "node-state"
    settings = {"source": "tconv_a", "data-dir": str(tmp_path / "data"), "state-dir": str(state), "public-key": str(keypair[1])}
    app = make_client_app([settings])
    metadata = Metadata(
        run_id=1, message_id="request-1", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="",
        created_at=time.time(), ttl=60.0, message_type="train.fit_head",
    )
    message = Message(content=fit_head_content(forged_bundle, TrainConfig(epochs=1)), metadata=metadata)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(), run_config={})
    reply = app(message, context)
    assert reply.has_error()
    assert "signature does not verify" in reply.error.reason and "tconv_a" in reply.error.reason
    assert reply.metadata.reply_to_message_id == "request-1"
    assert not (state / "head").exists()
    assert not list(state.rglob(WEIGHTS)), "nothing of a refused bundle may stay on the node"

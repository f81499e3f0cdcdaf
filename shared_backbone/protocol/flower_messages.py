"""The Flower message schema both roles import: message types, record names, bundle packing.

The coordinator's ServerApp and the nodes' ClientApp say everything to each other through the
names defined here, so there is exactly one definition of each.

A backbone bundle travels inside Flower records and is rebuilt (and verified) on the node.

The manifest pins the sha256 of every file's *bytes*, so the files travel as bytes (one uint8
array per file in an `ArrayRecord`) next to the exact manifest bytes and their signature (a
`ConfigRecord`). The receiving node checks the signature against its *own* configured public
key before writing anything, writes only the file names the signed manifest lists, and then
runs the same `bundle.load_bundle` check as `attribnet node train` does on a local folder.

The coordinator's reference negative set is not copied into every message: the message carries
a pointer (a folder path as the node sees it) and the set's content digest, and the node refuses
a folder whose content does not match that digest.

Model weights for federated averaging travel as a plain `ArrayRecord` of float arrays, in the
order of `model.get_weights()`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from shared_backbone.model import signing
from shared_backbone.model.bundle import MANIFEST, SIGNATURE, Bundle, BundleError, load_bundle

# Message types are "train.<action>"; a ClientApp registers its handlers by action.
FIT_HEAD_ACTION = "fit_head"  # verify the bundle, train + calibrate the head, reply
FINETUNE_ACTION = "finetune"  # one FedAvg step of the primary module (opted-in nodes)
FIT_HEAD = f"train.{FIT_HEAD_ACTION}"
FINETUNE = f"train.{FINETUNE_ACTION}"
FILES_RECORD = "bundle.files"  # ArrayRecord: one uint8 array per bundle file
META_RECORD = "bundle.meta"  # ConfigRecord: manifest bytes, signature, digest, version
TRAIN_RECORD = "train.config"  # ConfigRecord: TrainConfig fields for this round
RUN_RECORD = "run.config"  # ConfigRecord: calibration method, reference pointer, round label
RESULT_RECORD = "fit_head.result"  # ConfigRecord: a `registration.Registration` (to_json_values) + identity proofs
METRICS_RECORD = "fit_head.metrics"  # MetricRecord: flat numbers, for Flower's own aggregation/logs
FINETUNE_WEIGHTS = "finetune.weights"  # ArrayRecord: primary-module weights (to and from the node)
FINETUNE_RESULT = "finetune.result"  # ConfigRecord: example count and source, or `declined`
OBJECTIVE_FIELD = "objective"  # RUN_RECORD of train.finetune: one of FINETUNE_OBJECTIVES (node/finetune.py)
FINETUNE_OBJECTIVES = ("detection", "attribution")
# What a reply to `train.fit_head` may carry: a reply with model arrays is refused (heads stay local).
ALLOWED_FIT_HEAD_REPLY = frozenset({RESULT_RECORD, METRICS_RECORD})
# Identity (shared_backbone/protocol/identity.py): the coordinator puts a fresh challenge per node in
# RUN_RECORD; the node's RESULT_RECORD carries its public key, its signature over the challenge and
# the record's other values, and (first registration only) the proof of its enrolment token. The
# node's secret and the token themselves never travel.
CHALLENGE_FIELD = "challenge"  # RUN_RECORD: hex challenge for this node
PUBLIC_KEY_FIELD = "public_key"  # RESULT_RECORD: the node's Ed25519 public key (hex)
SIGNATURE_FIELD = "signature"  # RESULT_RECORD: identity.sign(FLOWER_REGISTER, challenge, node id, record digest)
ENROLMENT_PROOF_FIELD = "enrolment_proof"  # RESULT_RECORD: identity.enrolment_proof(...) or ""
PROOF_FIELDS = frozenset({SIGNATURE_FIELD, ENROLMENT_PROOF_FIELD})  # left out of the signed record digest


def pack_bundle(bundle: Bundle, content: RecordDict | None = None) -> RecordDict:
    """Adds the bundle's files, manifest and signature to `content` (a new RecordDict if None)."""
    content = content if content is not None else RecordDict()
    manifest_bytes = (bundle.path / MANIFEST).read_bytes()
    signature_path = bundle.path / SIGNATURE
    if not signature_path.is_file():
        raise BundleError(f"{bundle.path}: unsigned bundle ({SIGNATURE} missing); only signed bundles are sent")
    files = ArrayRecord()
    for name in sorted(bundle.manifest["files"]):
        data = (bundle.path / name).read_bytes()
        files[name] = Array(np.frombuffer(data, dtype=np.uint8).copy())
    content[FILES_RECORD] = files
    content[META_RECORD] = ConfigRecord(
        {
            "manifest": manifest_bytes,
            "signature": signature_path.read_bytes(),
            "digest": bundle.digest,
            "version": bundle.version,
        }
    )
    return content


def _safe_relative(name: str) -> PurePosixPath:
    """Refuses file names that could write outside the bundle folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts) or "\\" in name:
        raise BundleError(f"received bundle: unsafe file name {name!r} in the manifest")
    if name in (MANIFEST, SIGNATURE):
        raise BundleError(f"received bundle: the manifest must not list {name!r} as a payload file")
    return path


def unpack_bundle(content: RecordDict, cache_dir: str | Path, public_key: signing.Ed25519PublicKey) -> Bundle:
    """Verifies a received bundle and materialises it as `cache_dir/<digest>/`; returns it loaded.

    The signature is checked before any file is written; a folder already holding a verified
    copy of the same digest is reused.
    """
    if META_RECORD not in content.config_records or FILES_RECORD not in content.array_records:
        raise BundleError(f"received message carries no bundle (records {META_RECORD!r}/{FILES_RECORD!r} missing)")
    meta = content.config_records[META_RECORD]
    manifest_bytes, signature = meta.get("manifest"), meta.get("signature")
    if not isinstance(manifest_bytes, bytes) or not isinstance(signature, bytes) or not signature:
        raise BundleError("received bundle is unsigned (manifest or signature missing)")
    try:
        signing.verify(public_key, manifest_bytes, signature, what="received bundle")
    except signing.SignatureError as exc:
        raise BundleError(str(exc)) from None
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    cache_dir = Path(cache_dir)
    target = cache_dir / digest
    if target.is_dir():
        try:
            return load_bundle(target, public_key)
        except BundleError:
            shutil.rmtree(target)
    try:
        manifest = json.loads(manifest_bytes)
        names = list(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise BundleError("received bundle: manifest is not a bundle manifest") from None
    arrays = content.array_records[FILES_RECORD]
    unexpected = sorted(set(arrays) - set(names))
    if unexpected:
        raise BundleError(f"received bundle: file {unexpected[0]!r} is not listed in the signed manifest")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=cache_dir))
    try:
        for name in names:
            relative = _safe_relative(name)
            if name not in arrays:
                raise BundleError(f"received bundle: file {name!r} listed in the manifest was not sent")
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(arrays[name].numpy().astype(np.uint8, copy=False).tobytes())
        (staging / MANIFEST).write_bytes(manifest_bytes)
        (staging / SIGNATURE).write_bytes(signature)
        load_bundle(staging, public_key)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(target, public_key)


def weights_to_record(weights: list[np.ndarray]) -> ArrayRecord:
    """Model weights (as from `model.get_weights()`) for federated averaging."""
    return ArrayRecord([np.asarray(w) for w in weights])


def record_to_weights(record: ArrayRecord) -> list[np.ndarray]:
    return record.to_numpy_ndarrays()

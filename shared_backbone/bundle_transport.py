"""A backbone bundle carried inside Flower records, and rebuilt (and verified) on the node.

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
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from shared_backbone import signing
from shared_backbone.bundle import MANIFEST, SIGNATURE, Bundle, BundleError, load_bundle, sha256_file

FILES_RECORD = "bundle.files"
META_RECORD = "bundle.meta"


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


class ReferenceSetError(ValueError):
    """A reference set whose folder is missing or whose content differs from the announced digest."""


def folder_digest(root: str | Path) -> str:
    """sha256 over every (relative path, file sha256) of a folder, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise ReferenceSetError(f"reference set folder {root} not found")
    digest = hashlib.sha256()
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):  # sources are often symlinked folders
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files.extend(Path(folder) / name for name in names if not name.startswith("."))
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def verify_reference(path: str | Path, expected_digest: str) -> Path:
    """The reference folder, after checking its content is exactly the announced set."""
    actual = folder_digest(path)
    if actual != expected_digest:
        raise ReferenceSetError(
            f"reference set {path}: content digest {actual[:12]}… differs from the coordinator's {expected_digest[:12]}…"
        )
    return Path(path)

"""The backbone bundle: a signed, content-addressed folder holding the primary module.

Layout of BUNDLE/:
  primary.weights.h5   the whole primary module (trunk + tail), Keras 3 weights
  normstats/           mean.npy, std_dev.npy (DCT bundles only)
  manifest.json        version, parent, input spec, branch layer, parameter counts, metrics,
                       sha256 of every other file
  manifest.sig         Ed25519 signature of manifest.json's exact bytes

The bundle's digest is the sha256 of manifest.json; since the manifest pins every file's hash,
the digest names the whole content. Heads record it, and nothing combines a head with a bundle
of another digest.

Keras is imported only where a model is built or saved, so reading and verifying a bundle (the
Flower message schema does, on both roles) loads no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_backbone.model import signing
from shared_backbone.model.preprocessing import InputSpec, Normstats

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
WEIGHTS = "primary.weights.h5"
NORMSTATS_DIR = "normstats"
FORMAT = "attribnet.backbone/1"

if TYPE_CHECKING:
    import keras


class BundleError(ValueError):
    """A bundle that is incomplete, tampered with, unsigned or inconsistent."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict[str, Any]
    digest: str
    signed: bool

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def input_spec(self) -> InputSpec:
        normstats = Normstats.load(self.path / NORMSTATS_DIR) if self.manifest["input"]["mode"] == "dct" else None
        return InputSpec(self.manifest["input"]["image_size"], self.manifest["input"]["mode"], normstats)

    @property
    def short_digest(self) -> str:
        return self.digest[:12]

    @property
    def training_sources(self) -> dict[str, list[str]]:
        """{"detector": sources, "trunk": classes} the coordinator trained on, as signed; {} if it did not say."""
        return dict(self.manifest.get("metrics", {}).get("trained_on", {}))

    def load_primary(self) -> keras.Model:
        """Rebuilds the architecture from the manifest and loads the verified weights."""
        from shared_backbone.model import networks

        spec = self.manifest["input"]
        primary = networks.build_primary(spec["image_size"], spec["mode"])
        primary.load_weights(self.path / WEIGHTS)
        return primary


def _model_description(primary: keras.Model, spec: InputSpec) -> dict[str, Any]:
    """The manifest's account of the model: input, branch layer, feature shape, trainable parameter counts."""
    from shared_backbone.model import networks

    head = networks.build_head(spec.image_size, pooling=networks.pooling_for_mode(spec.mode))
    return {
        "input": {"image_size": spec.image_size, "mode": spec.mode, "channels": spec.channels},
        "branch_layer": networks.BRANCH_LAYER,
        "feature_shape": list(networks.feature_shape(spec.image_size)),
        "trainable_parameters": {
            "primary": networks.trainable_parameter_count(primary),
            "trunk": networks.trainable_parameter_count(networks.build_trunk(primary)),
            "head": networks.trainable_parameter_count(head),
        },
    }


def write_bundle(
    out_dir: str | Path,
    primary: keras.Model,
    spec: InputSpec,
    private_key: signing.Ed25519PrivateKey,
    *,
    version: str,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
) -> Bundle:
    """Writes a complete, signed bundle atomically (to a temp folder, then renamed).

    `reference` ({digest, sources}) announces the coordinator's reference set: the signature then
    covers its digest, so a node can verify its copy of the set.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BundleError(f"{out_dir} exists and is not empty; choose a new bundle folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700; a published bundle is read by other users' processes
    try:
        primary.save_weights(staging / WEIGHTS)
        if spec.mode == "dct":
            if spec.normstats is None:
                raise BundleError("a DCT bundle needs normstats")
            spec.normstats.save(staging / NORMSTATS_DIR)
        files = {
            str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "version": version,
            "parent": parent,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **_model_description(primary, spec),
            "metrics": metrics or {},
            "source": source or {},
            "reference": reference,
            "files": files,
        }
        manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        (staging / MANIFEST).write_bytes(manifest_bytes)
        (staging / SIGNATURE).write_bytes(signing.sign(private_key, manifest_bytes))
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle(out_dir, manifest, hashlib.sha256(manifest_bytes).hexdigest(), signed=True)


def load_bundle(path: str | Path, public_key: signing.Ed25519PublicKey | None) -> Bundle:
    """Verifies and opens a bundle; raises BundleError on any mismatch.

    With `public_key=None` only the file digests are checked (offline tools without a configured
    key); the returned bundle then has `signed=False`. Servers always pass a key.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a backbone bundle ({MANIFEST} missing)")
    manifest_bytes = manifest_path.read_bytes()
    if public_key is not None:  # before parsing: a tampered manifest is reported as such
        signature_path = path / SIGNATURE
        if not signature_path.is_file():
            raise BundleError(f"{path}: unsigned bundle ({SIGNATURE} missing)")
        try:
            signing.verify(public_key, manifest_bytes, signature_path.read_bytes(), what=str(path))
        except signing.SignatureError as exc:
            raise BundleError(str(exc)) from None
    try:
        manifest = json.loads(manifest_bytes)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise BundleError(f"{manifest_path}: not UTF-8 text (corrupt?)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{manifest_path}: unknown bundle format {found!r}")
    for key, kind in (("files", dict), ("input", dict), ("version", str), ("feature_shape", list)):
        if not isinstance(manifest.get(key), kind):
            raise BundleError(f"{manifest_path}: {key!r} is missing or not a {kind.__name__}")
    for name, expected in manifest["files"].items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{path}: file {name} listed in the manifest is missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(f"{path}: {name} has sha256 {actual[:12]}…, manifest says {expected[:12]}… (tampered?)")
    return Bundle(path, manifest, hashlib.sha256(manifest_bytes).hexdigest(), signed=public_key is not None)


def load_configured_bundle(bundle_path: str, public_key_path: str, *, keys: tuple[str, str] = ("bundle", "public_key")) -> Bundle:
    """The bundle a server or trainer is configured with, verified with the configured public key.

    Missing settings, a missing or malformed key file and every verification failure become one
    BundleError whose message names the setting (`keys` = the config names of the two paths).
    """
    if not bundle_path:
        raise BundleError(f"{keys[0]} is not set (the coordinator's published bundle folder)")
    if not public_key_path:
        raise BundleError(f"{keys[1]} is not set (the coordinator's coordinator.pub): only signed bundles are trusted")
    try:
        key = signing.load_public_key(public_key_path)
    except (signing.SignatureError, FileNotFoundError) as exc:
        raise BundleError(str(exc)) from None
    try:
        return load_bundle(bundle_path, key)
    except BundleError as exc:
        raise BundleError(f"{exc} ({keys[1]}: {public_key_path})") from None

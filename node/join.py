"""`attribnet node join`: from an admin's token to a node ready to serve, in one resumable step.

Order matters, because nothing fetched is trusted before it verified:
  1. the coordinator's public key must have the fingerprint the admin handed over,
  2. the bundle must carry that key's signature and match every file digest it signs,
  3. the reference set must have the content digest the signed bundle announces;
only then is the node's config written (STATE_DIR/node.yaml, for `attribnet node serve` later)
and the head trained, by the same `train_head` as `attribnet node train` (strict access).
A rerun resumes: files already here and verified are not fetched again, and a head already
trained on this bundle for this source is not retrained.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from node import state
from node.config import NodeConfig
from node.fetch import FetchError, FetchLimits, check_catalogue, fetch_files, open_distribution
from shared_backbone.config import load_config, to_dict
from shared_backbone.data.reference_set import ReferenceSetError, verify_reference
from shared_backbone.model import heads, signing
from shared_backbone.model.bundle import Bundle, BundleError, load_bundle, sha256_file
from shared_backbone.protocol import distribution
from shared_backbone.runtime import rpc

log = logging.getLogger(__name__)


class JoinError(ValueError):
    """A join step that failed or refused what it was given; the message says which, in one line."""


@dataclass
class JoinSettings:
    """What `attribnet node join` was told: where, who, with what; `base` holds every other node setting."""

    gateway: str
    token_file: str
    fingerprint: str
    source: str
    images: str
    state_dir: str
    node_id: str = ""
    limits: FetchLimits = field(default_factory=FetchLimits)
    base: NodeConfig = field(default_factory=NodeConfig)


def _step(number: int, text: str) -> None:
    log.info("join step %d/5: %s", number, text)


def _read_inputs(settings: JoinSettings) -> tuple[str, str, Path]:
    """(token, expected fingerprint, images folder), each checked before anything goes over the network."""
    try:
        token = rpc.read_secret(settings.token_file, "--token-file")
        fingerprint = signing.normalise_fingerprint(settings.fingerprint)
        rpc.check_plaintext(rpc.target_host(settings.gateway), settings.base.serve.tls, settings.base.serve.insecure, "--gateway")
    except (rpc.RpcConfigError, signing.SignatureError) as exc:
        raise JoinError(str(exc)) from None
    if not settings.token_file:
        raise JoinError("--token-file is required (the enrolment token file the admin handed over)")
    images = Path(settings.images)
    if not images.is_dir():
        raise JoinError(f"--images {images}: not a folder (the organisation's own images of source {settings.source})")
    return token, fingerprint, images


def trusted_key(pem: bytes, expected: str) -> signing.Ed25519PublicKey:
    """The coordinator's key from the network, only if its fingerprint is the one the admin handed over."""
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise JoinError("the coordinator's public key is not a PEM key: refused") from None
    if not isinstance(key, signing.Ed25519PublicKey):
        raise JoinError("the coordinator's public key is not an Ed25519 key: refused")
    actual = signing.fingerprint(key)
    if actual != expected:
        raise JoinError(f"the coordinator's public key has fingerprint {actual[:16]}…, not the {expected[:16]}… the admin "
                        "handed over: refused (wrong gateway, or someone in between)")
    return key


def _is_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def fetch_bundle(channel: grpc.Channel, opened, state_dir: Path, key: signing.Ed25519PublicKey) -> Bundle:
    """STATE/bundles/<digest>, fetched (or kept) and verified with the trusted key; removed when it does not verify."""
    claimed = opened.backbone.digest
    if not _is_digest(claimed):
        raise JoinError(f"the coordinator names its bundle {claimed[:20]!r}, not a sha256 digest: refused")
    folder = state_dir / state.BUNDLES_DIR / claimed
    stats = fetch_files(channel, opened, distribution.BUNDLE, folder)
    try:
        bundle = load_bundle(folder, key)
    except BundleError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise JoinError(f"the fetched bundle does not verify, refused: {exc}") from None
    if bundle.digest != claimed:
        shutil.rmtree(folder, ignore_errors=True)
        raise JoinError(f"the fetched bundle has digest {bundle.digest[:12]}…, the coordinator named {claimed[:12]}…: refused")
    log.info("bundle %s (%s) verified: %d file(s) fetched (%d bytes), %d already here", bundle.version,
             bundle.short_digest, stats.fetched, stats.fetched_bytes, stats.kept)
    return bundle


def fetch_reference(channel: grpc.Channel, opened, state_dir: Path, bundle: Bundle) -> Path | None:
    """STATE/reference/<digest>: the reference set, verified against the digest the signed bundle announces."""
    signed = (bundle.manifest.get("reference") or {}).get("digest", "")
    if not signed:
        log.info("bundle %s announces no reference set: the head trains on own images and self-made negatives",
                 bundle.short_digest)
        return None
    if not _is_digest(signed):
        raise JoinError(f"bundle {bundle.short_digest} announces a malformed reference digest: refused")
    if not any(f.set == distribution.REFERENCE for f in opened.files):
        raise JoinError(f"bundle {bundle.short_digest} announces a reference set but the coordinator distributes none")
    folder = state_dir / state.REFERENCE_DIR / signed
    stats = fetch_files(channel, opened, distribution.REFERENCE, folder)
    try:
        verify_reference(folder, signed)
    except ReferenceSetError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise JoinError(f"the fetched reference set does not verify, refused: {exc}") from None
    log.info("reference set %s… verified: %d file(s) fetched (%d bytes), %d already here", signed[:12], stats.fetched,
             stats.fetched_bytes, stats.kept)
    return folder


def _data_root(images: Path, source: str, state_dir: Path) -> Path:
    """A folder-per-source root holding the node's images as `<source>/` (a link in STATE/data unless it is one)."""
    if images.name == source:
        return images.resolve().parent
    if (images / source).is_dir():
        return images.resolve()
    link = state_dir / state.DATA_DIR / source
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() != images.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(images.resolve(), target_is_directory=True)
    return link.parent


def write_node_config(settings: JoinSettings, bundle: Bundle, key_path: Path, reference: Path | None, data_root: Path) -> Path:
    """STATE/node.yaml: the base settings with every path this join decided, absolute (so it works from any folder)."""
    base = settings.base
    state_dir = Path(settings.state_dir).resolve()
    spec = bundle.manifest["input"]
    config = dataclasses.replace(
        base, source=settings.source, node_id=settings.node_id or settings.source, backbone=str(bundle.path.resolve()),
        public_key=str(key_path.resolve()), reference=str(reference.resolve()) if reference else "", state_dir=str(state_dir),
        data=dataclasses.replace(base.data, root=str(data_root), image_size=int(spec["image_size"]), mode=str(spec["mode"])),
        serve=dataclasses.replace(base.serve, coordinator=settings.gateway),
    )
    path = state_dir / state.NODE_CONFIG_FILE
    path.write_text("# written by `attribnet node join`; serve again with: attribnet node serve --config "
                    f"{path}\n" + yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def _keep_token(token: str, config: NodeConfig) -> None:
    """The admin's token where `node serve` reads it (STATE/enrolment.token, 0600), unless configured elsewhere."""
    if config.serve.enrolment_token_file:
        return
    path = state.enrolment_token_path(config)
    if not path.is_file() or path.read_text().strip() != token:
        signing.write_private(path, (token + "\n").encode(), overwrite=True)


def _say_what_the_coordinator_saw(bundle: Bundle, source: str) -> None:
    """Logs the sources the bundle's detector trained on (signed in its manifest), and whether this node's is one."""
    seen = bundle.training_sources.get("detector")
    if not seen:
        log.info("the bundle does not name the sources its detector trained on")
        return
    log.info("the coordinator's detector trained on %s (%s %s)", ", ".join(seen), source,
             "among them" if source in seen else "not among them: this node joins late")


def trained_on(config: NodeConfig, bundle: Bundle) -> bool:
    """True when STATE/head is this source's head, trained on exactly this bundle, with intact weights."""
    head_dir = state.head_dir(config)
    try:
        meta = heads.read_head_meta(head_dir)
        weights = head_dir / heads.HEAD_WEIGHTS
        return (meta.get("backbone_digest") == bundle.digest and meta.get("source") == config.source
                and weights.is_file() and sha256_file(weights) == meta.get("weights_sha256"))
    except (heads.HeadError, OSError, ValueError):
        return False


def join(settings: JoinSettings) -> NodeConfig:
    """Fetches and verifies, writes STATE/node.yaml, trains unless done; returns the config `node serve` runs."""
    began = time.monotonic()
    token, fingerprint, images = _read_inputs(settings)
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    identity_config = dataclasses.replace(settings.base, state_dir=str(state_dir))
    try:
        secret = state.node_secret(identity_config)
    except state.StateError as exc:
        raise JoinError(str(exc)) from None
    node_id = settings.node_id or settings.source
    _step(1, f"open the distribution of {settings.gateway} as node {node_id} (source {settings.source})")
    channel = rpc.open_channel(settings.gateway, settings.base.serve.tls, settings.base.serve.max_message_mb)
    try:
        opened = open_distribution(channel, node_id, settings.source, token, secret)
        key = trusted_key(opened.public_key_pem, fingerprint)
        log.info("coordinator key verified (fingerprint %s…)", fingerprint[:16])
        check_catalogue(list(opened.files), settings.limits)
        _step(2, f"fetch and verify the bundle and the reference set ({len(opened.files)} files)")
        bundle = fetch_bundle(channel, opened, state_dir, key)
        reference = fetch_reference(channel, opened, state_dir, bundle)
    except FetchError as exc:
        raise JoinError(str(exc)) from None
    finally:
        channel.close()
    _say_what_the_coordinator_saw(bundle, settings.source)
    key_path = state_dir / state.COORDINATOR_KEY_FILE
    signing.write_private(key_path, opened.public_key_pem, overwrite=True)
    _step(3, "write the node's config")
    config_path = write_node_config(settings, bundle, key_path, reference, _data_root(images, settings.source, state_dir))
    config = load_config(NodeConfig, config_path)
    _keep_token(token, config)
    log.info("config in %s", config_path)
    if trained_on(config, bundle):
        _step(4, f"head in {state.head_dir(config)} is already trained on bundle {bundle.short_digest}: not retrained")
    else:
        _step(4, f"train and calibrate the head for {settings.source} ({config.access} access)")
        from node.train_head import train_head

        train_head(config, bundle, progress=False)
    log.info("joined in %.1f s", time.monotonic() - began)
    return config

"""The coordinator's Ed25519 key pair: generate, save (PEM), load, sign, verify; private files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_KEY_FILE = "coordinator.key"
PUBLIC_KEY_FILE = "coordinator.pub"


class SignatureError(ValueError):
    """A signature that is missing, malformed or made by another key."""


def write_private(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Creates `path` with mode 0600 from the first byte (O_EXCL: never through an existing file or link).

    With `overwrite`, a private temporary file beside it is renamed over the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: 0600, O_EXCL
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return path
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)
    return path


def generate_keypair(directory: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Writes `coordinator.key` (0600) and `coordinator.pub` into directory; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if private_path.exists() and not overwrite:
        raise FileExistsError(f"{private_path} already exists (use --overwrite to replace it)")
    key = Ed25519PrivateKey.generate()
    write_private(
        private_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        overwrite=overwrite,
    )
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def ensure_keypair(directory: str | Path) -> tuple[Path, Path]:
    """The key pair in `directory`, generated when it is not there yet (demos and benchmarks reuse theirs)."""
    directory = Path(directory)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if private_path.is_file() and public_path.is_file():
        return private_path, public_path
    return generate_keypair(directory)


def _load_pem(path: str | Path, kind: str, load, expected: type, missing_hint: str = ""):
    """A PEM key of type `expected` from `path`; a clear error for a missing, malformed or other-type key."""
    path = Path(path)
    try:
        key = load(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{kind} key {path} not found{missing_hint}") from None
    except ValueError as exc:
        raise SignatureError(f"{path}: not a PEM {kind} key ({exc})") from None
    if not isinstance(key, expected):
        raise SignatureError(f"{path}: not an Ed25519 {kind} key")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    return _load_pem(path, "private", lambda data: serialization.load_pem_private_key(data, password=None),
                     Ed25519PrivateKey, " (attribnet coordinator keygen)")


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    return _load_pem(path, "public", serialization.load_pem_public_key, Ed25519PublicKey)


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw 32-byte public key: what an admin hands over so a node can check the key it fetched."""
    return hashlib.sha256(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as typed (optional "sha256:" prefix, colons, spaces, any case) -> 64 lower-case hex digits."""
    value = text.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SignatureError(f"fingerprint {text.strip()!r}: not a sha256 (64 hex digits, as `attribnet coordinator enrol` prints)")
    return value


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    return key.sign(payload)


def verify(key: Ed25519PublicKey, payload: bytes, signature: bytes, *, what: str) -> None:
    """Raises SignatureError naming `what` when the signature does not match."""
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise SignatureError(f"{what}: signature does not verify with the configured public key") from None

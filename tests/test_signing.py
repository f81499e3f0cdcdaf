"""The coordinator's Ed25519 keys: generation, file permissions, signing, and refusals."""

from __future__ import annotations

import stat

import pytest

from attribnet.cli import main
from shared_backbone.model import signing


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    private, public = signing.generate_keypair(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = signing.load_private_key(private)
    assert signing.public_key_pem(key.public_key()) == public.read_bytes()


def test_keygen_refuses_to_overwrite_unless_asked(tmp_path):
    private, _ = signing.generate_keypair(tmp_path)
    before = private.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        signing.generate_keypair(tmp_path)
    assert private.read_bytes() == before
    signing.generate_keypair(tmp_path, overwrite=True)
    assert private.read_bytes() != before


def test_sign_and_verify(tmp_path):
    private, public = signing.generate_keypair(tmp_path / "a")
    _, other = signing.generate_keypair(tmp_path / "b")
    key = signing.load_private_key(private)
    signature = signing.sign(key, b"manifest bytes")
    signing.verify(signing.load_public_key(public), b"manifest bytes", signature, what="m")
    with pytest.raises(signing.SignatureError, match="^bundle X: signature does not verify"):
        signing.verify(signing.load_public_key(public), b"manifest bytez", signature, what="bundle X")
    with pytest.raises(signing.SignatureError, match="signature does not verify"):
        signing.verify(signing.load_public_key(other), b"manifest bytes", signature, what="m")
    with pytest.raises(signing.SignatureError, match="signature does not verify"):
        signing.verify(signing.load_public_key(public), b"manifest bytes", signature[:10], what="m")


def test_bad_key_files_are_refused_clearly(tmp_path):
    private, public = signing.generate_keypair(tmp_path)
    with pytest.raises(FileNotFoundError, match="attribnet coordinator keygen"):
        signing.load_private_key(tmp_path / "missing.key")
    with pytest.raises(FileNotFoundError, match="public key .* not found"):
        signing.load_public_key(tmp_path / "missing.pub")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(signing.SignatureError, match="not a PEM public key"):
        signing.load_public_key(garbage)
    with pytest.raises(signing.SignatureError, match="not a PEM private key"):
        signing.load_private_key(garbage)
    with pytest.raises(signing.SignatureError, match="not a PEM public key"):
        signing.load_public_key(private)  # the private key is not a public key


def test_cli_keygen(tmp_path, capsys):
    assert main(["coordinator", "keygen", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "coordinator.key" in out and "coordinator.pub" in out
    assert main(["coordinator", "keygen", "--out", str(tmp_path / "k")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"attribnet coordinator: error: {tmp_path / 'k' / 'coordinator.key'} already exists (use --overwrite to replace it)"
    )
    assert main(["coordinator", "keygen", "--out", str(tmp_path / "k"), "--overwrite"]) == 0


def test_cli_keygen_defaults_to_the_configured_key_folder(tmp_path, capsys):
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"private_key: {tmp_path / 'conf-keys' / 'coordinator.key'}\n")
    assert main(["coordinator", "keygen", "--config", str(config)]) == 0
    assert (tmp_path / "conf-keys" / "coordinator.key").is_file()

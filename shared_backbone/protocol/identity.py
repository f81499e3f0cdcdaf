"""How a node proves who it is without ever sending its secret: one definition for both roles.

A node's identity secret (STATE_DIR/node.secret) never leaves the node. It derives an Ed25519
key pair from it (`node_key`); the coordinator binds the *public* key to the node id at the
first registration and from then on accepts a registration, heartbeat or deregistration for that
id only with a signature, made with that key, over a challenge the coordinator issued (single use,
short-lived) and the digest of the exact request. A replayed or altered request does not verify.

The first registration of a node id also needs an enrolment token, which the coordinator admin
issued for exactly that node id and source (`attribnet coordinator enrol`). The token does not
travel either: the node sends an HMAC, keyed with sha256(token), over the same challenge, its
node id, source and public key; the coordinator stores only sha256(token) and so can check it.

The same token (or, once registered, the node's key) lets a joining node fetch the bundle, the
coordinator's key and the reference set (`DistributionService`, purpose `fetch`).

Both registration paths use these functions: the gRPC `RegistryService` (challenge from its
`Challenge` RPC, proofs in metadata) and the Flower head round (challenge in the `train.fit_head`
message, proofs in the reply record).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CONTEXT = "attribnet.identity.v1"
REGISTER = "register"  # RegistryService.Register
HEARTBEAT = "heartbeat"  # RegistryService.Heartbeat
DEREGISTER = "deregister"  # RegistryService.Deregister (the request names the registration's generation)
FLOWER_REGISTER = "flower-register"  # the reply to train.fit_head
FETCH = "fetch"  # DistributionService.Open: a registered node's signature, or an enrolment holder's HMAC
PUBLIC_KEY_HEX_LENGTH = 64
SIGNATURE_HEX_LENGTH = 128
MAX_CHALLENGE_LENGTH = 128


def node_key(secret: str) -> Ed25519PrivateKey:
    """The node's signing key, derived from its identity secret (so existing secret files keep working)."""
    seed = hashlib.sha256(f"{CONTEXT}|node-key|{secret}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _proof_message(purpose: str, challenge: str, node_id: str, payload_digest: str) -> bytes:
    return f"{CONTEXT}|{purpose}|{challenge}|{node_id}|{payload_digest}".encode()


def sign(key: Ed25519PrivateKey, purpose: str, challenge: str, node_id: str, payload_digest: str) -> str:
    """Hex signature binding the purpose, the coordinator's challenge, the node id and the request."""
    return key.sign(_proof_message(purpose, challenge, node_id, payload_digest)).hex()


def verify(public_hex: str, signature_hex: str, purpose: str, challenge: str, node_id: str, payload_digest: str) -> bool:
    """True when `signature_hex` is the node key's signature over exactly these values."""
    if len(public_hex) != PUBLIC_KEY_HEX_LENGTH or len(signature_hex) != SIGNATURE_HEX_LENGTH:
        return False
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        public.verify(bytes.fromhex(signature_hex), _proof_message(purpose, challenge, node_id, payload_digest))
    except (ValueError, InvalidSignature):
        return False
    return True


def enrolment_key(token: str) -> bytes:
    """What the coordinator stores of an enrolment token (and the key of its HMAC proofs)."""
    return hashlib.sha256(f"{CONTEXT}|enrolment|{token}".encode()).digest()


def _enrolment_message(challenge: str, node_id: str, source: str, public_hex: str) -> bytes:
    return f"{CONTEXT}|enrol|{challenge}|{node_id}|{source}|{public_hex}".encode()


def enrolment_proof(token: str, challenge: str, node_id: str, source: str, public_hex: str) -> str:
    """HMAC proving possession of the enrolment token, bound to this challenge, id, source and key."""
    return hmac.new(enrolment_key(token), _enrolment_message(challenge, node_id, source, public_hex), "sha256").hexdigest()


def check_enrolment_proof(key: bytes, proof: str, challenge: str, node_id: str, source: str, public_hex: str) -> bool:
    expected = hmac.new(key, _enrolment_message(challenge, node_id, source, public_hex), "sha256").hexdigest()
    return hmac.compare_digest(expected.encode(), proof.encode())


def _fetch_message(challenge: str, node_id: str, source: str) -> bytes:
    return f"{CONTEXT}|{FETCH}|{challenge}|{node_id}|{source}".encode()


def fetch_proof(token: str, challenge: str, node_id: str, source: str) -> str:
    """HMAC proving possession of the enrolment token before the node has a registered key (DistributionService)."""
    return hmac.new(enrolment_key(token), _fetch_message(challenge, node_id, source), "sha256").hexdigest()


def check_fetch_proof(key: bytes, proof: str, challenge: str, node_id: str, source: str) -> bool:
    expected = hmac.new(key, _fetch_message(challenge, node_id, source), "sha256").hexdigest()
    return hmac.compare_digest(expected.encode(), proof.encode())


def message_digest(message: Any) -> str:
    """sha256 of a protobuf message's deterministic serialisation (what a gRPC proof signs)."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def record_digest(values: Mapping[str, Any], exclude: frozenset[str] = frozenset()) -> str:
    """sha256 of a Flower record's values as canonical JSON, without the proof fields themselves."""
    canonical = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in values.items() if k not in exclude}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
    return hashlib.sha256(text.encode()).hexdigest()

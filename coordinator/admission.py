"""Who may register: the coordinator's side of the node identity proofs, for both registration paths.

A registration is admitted when (1) its signature verifies with the presented public key over a
challenge this coordinator issued (single use, `CHALLENGE_TTL` seconds) and the request's digest,
(2) that key is the one bound to the node id, or, for a node id not yet registered, the node
proves the admin's enrolment token for exactly this node id and source, and (3) the registry's
validator accepts what the node says. See `shared_backbone.protocol.identity` for the proofs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from coordinator.registry import IdentityMismatch, NodeEntry, Registry, RegistryError, UnknownNode
from shared_backbone.protocol import identity
from shared_backbone.protocol.registration import Registration

CHALLENGE_TTL = 60.0
MAX_OPEN_CHALLENGES = 4096


class NotAuthenticated(RegistryError):
    """A signature or enrolment proof that does not verify."""


class StaleChallenge(RegistryError):
    """A challenge this coordinator did not issue, already used or expired: ask for a new one."""


@dataclass(frozen=True)
class Proof:
    """What a node presents with a registration or heartbeat."""

    public_key: str
    signature: str
    challenge: str
    payload_digest: str
    enrolment_proof: str = ""


class ChallengeBook:
    """Issued challenges, each usable once for one node id within its time to live; bounded in size."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._open: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self, node_id: str, ttl: float = CHALLENGE_TTL) -> str:
        """A fresh challenge for `node_id`, valid for `ttl` seconds (a Flower round: its whole timeout)."""
        challenge = secrets.token_hex(32)
        with self._lock:
            self._open[challenge] = (node_id, self.clock() + ttl)
            while len(self._open) > MAX_OPEN_CHALLENGES:
                self._open.popitem(last=False)
        return challenge

    def take(self, challenge: str, node_id: str) -> None:
        """Uses up a challenge; StaleChallenge when it is unknown, expired, or for another node id."""
        with self._lock:
            entry = self._open.pop(challenge, None)
        if entry is None or entry[0] != node_id or entry[1] < self.clock():
            raise StaleChallenge("challenge unknown, used or expired; ask for a new one")


class Admission:
    """Checks a node's proofs, then hands the registration to the registry (which validates it)."""

    def __init__(self, registry: Registry, challenges: ChallengeBook | None = None) -> None:
        self.registry = registry
        self.challenges = challenges or ChallengeBook()

    def register(self, registration: Registration, proof: Proof, purpose: str = identity.REGISTER,
                 challenge_for: str | None = None) -> NodeEntry:
        """Admits one registration; raises a RegistryError subclass (or InvalidRegistration) naming why.

        `challenge_for`: whom the challenge was issued to, when not the node id (a Flower node).
        """
        node_id = registration.node_id
        self._check_signature(node_id, proof, purpose, challenge_for)
        bound = self.registry.bound_key(node_id)
        enrolment_ok = False
        if bound is None:
            enrolment = self.registry.enrolment(node_id)
            if enrolment is not None and proof.enrolment_proof:
                enrolment_ok = identity.check_enrolment_proof(
                    enrolment[1], proof.enrolment_proof, proof.challenge, node_id, registration.source,
                    proof.public_key,
                )
                if not enrolment_ok:
                    raise NotAuthenticated(f"node id {node_id!r}: the enrolment proof does not verify (wrong token?)")
        return self.registry.register(registration, public_key=proof.public_key, enrolment_verified=enrolment_ok)

    def admit_fetch(self, node_id: str, source: str, proof: Proof) -> None:
        """Lets a node fetch the bundle and reference set (DistributionService.Open), or raises NotAuthenticated.

        Admitted: the HMAC of the node id's unused enrolment token for exactly this source, or, once
        the node registered (the token used up), the bound key's signature over the request.
        """
        self.challenges.take(proof.challenge, node_id)
        enrolment = self.registry.enrolment(node_id)
        if enrolment is not None and proof.enrolment_proof and enrolment[0] == source and identity.check_fetch_proof(
                enrolment[1], proof.enrolment_proof, proof.challenge, node_id, source):
            return
        bound = self.registry.bound_key(node_id)
        if bound is not None and proof.signature and bound == (source, proof.public_key) and identity.verify(
                proof.public_key, proof.signature, identity.FETCH, proof.challenge, node_id, proof.payload_digest):
            return
        if enrolment is None and bound is None:
            raise NotAuthenticated(f"node id {node_id!r} is not enrolled, or its enrolment token was used "
                                   "(the admin runs `attribnet coordinator enrol`)")
        raise NotAuthenticated(f"node id {node_id!r}: neither an enrolment proof for source {source!r} nor the "
                               "registered node's signature verifies (wrong or used token, or another source?)")

    def heartbeat(self, node_id: str, proof: Proof) -> NodeEntry:
        self._check_bound_node(node_id, proof, identity.HEARTBEAT)
        return self.registry.heartbeat(node_id)

    def deregister(self, node_id: str, generation: int, proof: Proof) -> NodeEntry:
        """The node's own signed leave (the proof's digest covers `generation`); the registry checks the generation."""
        self._check_bound_node(node_id, proof, identity.DEREGISTER)
        return self.registry.deregister(node_id, generation)

    def _check_bound_node(self, node_id: str, proof: Proof, purpose: str) -> None:
        """A registered node id, a signature that verifies, made with the key bound to the id (in that order)."""
        bound = self.registry.bound_key(node_id)
        if bound is None:
            raise UnknownNode(f"node id {node_id!r} is not registered")
        self._check_signature(node_id, proof, purpose)
        if bound[1] != proof.public_key:
            raise IdentityMismatch(f"node id {node_id!r} is registered by another node (key does not match)")

    def _check_signature(self, node_id: str, proof: Proof, purpose: str, challenge_for: str | None = None) -> None:
        self.challenges.take(proof.challenge, challenge_for or node_id)
        if not identity.verify(proof.public_key, proof.signature, purpose, proof.challenge, node_id, proof.payload_digest):
            raise NotAuthenticated(f"node id {node_id!r}: the signature does not verify")

"""A joining node's side of `DistributionService`: open with its proof, fetch files bounded and resumable.

Nothing here decides trust (`node.join` verifies the key, the bundle's signature and the
reference set's digest before using anything): this module makes sure the coordinator cannot
write outside the node's folders, cannot send more bytes than it announced or than the node's
limits allow, and that a file already here with the announced size and sha256 is not fetched
again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from shared_backbone.model.bundle import sha256_file
from shared_backbone.protocol import distribution, identity
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from shared_backbone.runtime import rpc

log = logging.getLogger(__name__)

MB = 1 << 20


class FetchError(ValueError):
    """A refused or failed fetch; the message says which file or limit, in one line."""


@dataclass(frozen=True)
class FetchLimits:
    """What a node accepts from the coordinator, whatever the coordinator announces."""

    max_file_bytes: int = 256 * MB
    max_total_bytes: int = 2048 * MB


@dataclass
class FetchStats:
    fetched: int = 0
    fetched_bytes: int = 0
    kept: int = 0  # already here with the announced size and sha256


def rpc_error(exc: grpc.RpcError, what: str) -> FetchError:
    return FetchError(f"{what}: {exc.code().name}: {exc.details()}")


def open_distribution(channel: grpc.Channel, node_id: str, source: str, token: str, secret: str,
                      timeout: float = 30.0) -> pb.OpenResponse:
    """`Open` with a fresh challenge, proven by the enrolment token (before registration) and the node's key (after)."""
    request = pb.OpenRequest(node_id=node_id, source=source)
    key = identity.node_key(secret)
    try:
        challenge = pb_grpc.RegistryServiceStub(channel).Challenge(pb.ChallengeRequest(node_id=node_id), timeout=timeout).challenge
        metadata = [(rpc.PUBLIC_KEY_METADATA, identity.public_key_hex(key)), (rpc.CHALLENGE_METADATA, challenge),
                    (rpc.SIGNATURE_METADATA, identity.sign(key, identity.FETCH, challenge, node_id, identity.message_digest(request)))]
        if token:
            metadata.append((rpc.ENROLMENT_PROOF_METADATA, identity.fetch_proof(token, challenge, node_id, source)))
        return pb_grpc.DistributionServiceStub(channel).Open(request, metadata=tuple(metadata), timeout=timeout)
    except grpc.RpcError as exc:
        raise rpc_error(exc, "the coordinator refused to distribute its files") from None


def check_catalogue(files: list[pb.DistributedFile], limits: FetchLimits) -> None:
    """Refuses a catalogue with an unsafe path, a malformed digest, or a file or total beyond the node's limits."""
    total = 0
    for item in files:
        try:
            distribution.check_set(item.set)
            distribution.check_relative_path(item.path)
        except distribution.UnsafePath as exc:
            raise FetchError(f"the coordinator's catalogue: {exc}") from None
        if len(item.sha256) != 64 or any(c not in "0123456789abcdef" for c in item.sha256):
            raise FetchError(f"the coordinator's catalogue: {item.set} file {item.path} has a malformed sha256")
        if item.size > limits.max_file_bytes:
            raise FetchError(f"{item.set} file {item.path} is {item.size / MB:.1f} MB, beyond this node's limit of "
                             f"{limits.max_file_bytes / MB:g} MB per file (--max-file-mb): refused")
        total += item.size
    if total > limits.max_total_bytes:
        raise FetchError(f"the coordinator's files total {total / MB:.1f} MB, beyond this node's limit of "
                         f"{limits.max_total_bytes / MB:g} MB (--max-total-mb): refused")


def fetch_files(channel: grpc.Channel, opened: pb.OpenResponse, set_name: str, folder: Path, timeout: float = 300.0) -> FetchStats:
    """Every catalogue file of `set_name` into `folder` (kept when already there, verified by size and sha256)."""
    stats = FetchStats()
    stub = pb_grpc.DistributionServiceStub(channel)
    for item in (f for f in opened.files if f.set == set_name):
        target = folder.joinpath(*distribution.check_relative_path(item.path))
        if target.is_file() and target.stat().st_size == item.size and sha256_file(target) == item.sha256:
            stats.kept += 1
            continue
        _fetch_one(stub, opened.ticket, item, target, timeout)
        stats.fetched += 1
        stats.fetched_bytes += item.size
    return stats


def _fetch_one(stub: pb_grpc.DistributionServiceStub, ticket: str, item: pb.DistributedFile, target: Path, timeout: float) -> None:
    """Streams one file into a hidden part file beside `target`, renamed into place once size and sha256 match."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    digest, received = hashlib.sha256(), 0
    what = f"{item.set} file {item.path}"
    try:
        with open(part, "wb") as out:
            for chunk in stub.Fetch(pb.FetchRequest(set=item.set, path=item.path), timeout=timeout,
                                    metadata=((distribution.FETCH_TICKET, opened_ticket(ticket)),)):
                if chunk.offset != received:
                    raise FetchError(f"{what}: chunk at offset {chunk.offset}, expected {received}")
                received += len(chunk.data)
                if received > item.size:
                    raise FetchError(f"{what}: the coordinator sent more than the {item.size} bytes it announced: refused")
                digest.update(chunk.data)
                out.write(chunk.data)
        if received != item.size:
            raise FetchError(f"{what}: received {received} of {item.size} bytes")
        if digest.hexdigest() != item.sha256:
            raise FetchError(f"{what}: sha256 {digest.hexdigest()[:12]}… differs from the catalogue's {item.sha256[:12]}… "
                             "(tampered or corrupt in transit): refused")
        os.replace(part, target)
    except grpc.RpcError as exc:
        raise rpc_error(exc, f"fetching {what}") from None
    finally:
        part.unlink(missing_ok=True)


def opened_ticket(ticket: str) -> str:
    if not ticket or len(ticket) > 256:
        raise FetchError("the coordinator's Open answer carries no usable fetch ticket")
    return ticket

"""`DistributionService`: hands an enrolled node the signed bundle, the coordinator's key and the reference set.

Joining used to mean copying these by hand. Only an enrolled node may fetch (the reference set
is not public): `Open` checks the same enrolment token as the first registration (an HMAC over a
fresh challenge, the token never travels) or, once the node registered, its key's signature, and
returns the catalogue with a short-lived ticket for `Fetch`. Only catalogued files are served, so
nothing outside the bundle and reference folders can be asked for; files and totals beyond the
configured limits are refused. The node verifies everything itself (the key's fingerprint, the
bundle's signature, the reference set's signed digest): this service is transport, not trust.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from coordinator.admission import Admission, NotAuthenticated, Proof, StaleChallenge
from coordinator.config import CoordinatorConfig, DistributionConfig
from coordinator.validation import InvalidRegistration, check_node_id, check_source
from shared_backbone.data.reference_set import ReferenceSetError, digest_of, folder_files
from shared_backbone.model.bundle import MANIFEST, SIGNATURE, Bundle, sha256_file
from shared_backbone.protocol import distribution, identity
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
from shared_backbone.runtime import rpc

log = logging.getLogger(__name__)

MB = 1 << 20
MAX_OPEN_TICKETS = 1024


class CatalogueError(Exception):
    """The coordinator cannot offer its files; carries the gRPC status code and a one-line reason."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CatalogueFile:
    set: str
    path: str
    size: int
    sha256: str
    location: Path


def _stat_key(paths: list[Path]) -> tuple:
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


class Catalogue:
    """The files a joining node fetches, hashed once and again only when a file's size or mtime changed."""

    def __init__(self, bundle: Bundle, reference: str, config: DistributionConfig) -> None:
        self.bundle, self.reference, self.config = bundle, reference, config
        self._lock = threading.Lock()
        self._stats: tuple = ()
        self._files: dict[tuple[str, str], CatalogueFile] = {}
        self.reference_digest = ""

    def _sources(self) -> list[tuple[str, str, Path]]:
        names = [MANIFEST, SIGNATURE, *sorted(self.bundle.manifest["files"])]
        listed = [(distribution.BUNDLE, name, self.bundle.path / name) for name in names]
        announced = (self.bundle.manifest.get("reference") or {}).get("digest", "")
        if announced and not self.reference:
            raise CatalogueError(grpc.StatusCode.FAILED_PRECONDITION, f"bundle {self.bundle.short_digest} announces a "
                                 "reference set but the coordinator serves none (set `reference` in its coordinator.yaml)")
        if self.reference:
            try:
                listed += [(distribution.REFERENCE, rel, path) for rel, path in folder_files(self.reference)]
            except ReferenceSetError as exc:
                raise CatalogueError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        return listed

    def files(self) -> dict[tuple[str, str], CatalogueFile]:
        """(set, path) -> file; CatalogueError when a file is missing, too large, or the reference set differs."""
        with self._lock:
            sources = self._sources()
            try:
                stats = _stat_key([path for _, _, path in sources])
            except OSError as exc:
                raise CatalogueError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot read {exc.filename}: {exc.strerror}") from None
            if stats != self._stats:
                self._files, self._stats = {}, ()  # nothing is served from a catalogue that no longer builds
                self._files, self.reference_digest = self._build(sources)
                self._stats = stats
            return self._files

    def cached(self) -> dict[tuple[str, str], CatalogueFile]:
        """The catalogue as the last `files()` built it (Fetch: no re-statting per file; the node checks sha256)."""
        with self._lock:
            return self._files

    def _build(self, sources: list[tuple[str, str, Path]]) -> tuple[dict[tuple[str, str], CatalogueFile], str]:
        limit, total = self.config.max_file_mb * MB, 0
        files = {}
        for kind, name, path in sources:
            try:
                distribution.check_relative_path(name)
            except distribution.UnsafePath as exc:
                raise CatalogueError(grpc.StatusCode.FAILED_PRECONDITION, f"{kind} {exc}: not distributed") from None
            size = path.stat().st_size
            if size > limit:
                raise CatalogueError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{kind} file {name} is {size / MB:.1f} MB, "
                                     f"beyond distribution.max_file_mb ({self.config.max_file_mb:g})")
            total += size
            files[(kind, name)] = CatalogueFile(kind, name, size, sha256_file(path), path)
        if total > self.config.max_total_mb * MB:
            raise CatalogueError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the files to distribute total {total / MB:.1f} MB, "
                                 f"beyond distribution.max_total_mb ({self.config.max_total_mb:g})")
        reference = [(f.path, f.sha256) for f in files.values() if f.set == distribution.REFERENCE]
        digest = digest_of(reference) if self.reference else ""
        announced = (self.bundle.manifest.get("reference") or {}).get("digest", "")
        if self.reference and digest != announced:
            raise CatalogueError(grpc.StatusCode.FAILED_PRECONDITION, f"reference folder {self.reference} has digest "
                                 f"{digest[:12]}…, bundle {self.bundle.short_digest} announces {announced[:12] or 'none'}…")
        return files, digest


class DistributionServicer(pb_grpc.DistributionServiceServicer):
    """Open (admission + catalogue + ticket) and Fetch (one catalogued file, chunked)."""

    def __init__(self, bundle: Bundle, reference: str, public_key_pem: bytes, admission: Admission,
                 config: DistributionConfig) -> None:
        self.bundle, self.public_key_pem, self.admission, self.config = bundle, public_key_pem, admission, config
        self.catalogue = Catalogue(bundle, reference, config)
        self._tickets: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.files_served = 0
        self.bytes_served = 0

    def Open(self, request: pb.OpenRequest, context: grpc.ServicerContext) -> pb.OpenResponse:
        try:
            check_node_id(request.node_id)
            check_source(request.source)
        except InvalidRegistration as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        proof = Proof(
            public_key=rpc.metadata_value(context, rpc.PUBLIC_KEY_METADATA), signature=rpc.metadata_value(context, rpc.SIGNATURE_METADATA),
            challenge=rpc.metadata_value(context, rpc.CHALLENGE_METADATA), payload_digest=identity.message_digest(request),
            enrolment_proof=rpc.metadata_value(context, rpc.ENROLMENT_PROOF_METADATA),
        )
        try:
            self.admission.admit_fetch(request.node_id, request.source, proof)
            files = self.catalogue.files()
        except StaleChallenge as exc:
            context.abort(grpc.StatusCode.ABORTED, str(exc))
        except NotAuthenticated as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except CatalogueError as exc:
            log.error("distribution refused to %s: %s", request.node_id, exc)
            context.abort(exc.code, str(exc))
        ticket = self._issue(request.node_id)
        log.info("node %s (source %s) opened the distribution: %d files, %.1f MB", request.node_id, request.source,
                 len(files), sum(f.size for f in files.values()) / MB)
        return pb.OpenResponse(
            public_key_pem=self.public_key_pem, backbone=pb.Backbone(version=self.bundle.version, digest=self.bundle.digest),
            reference_digest=self.catalogue.reference_digest, ticket=ticket, ticket_expires_in_seconds=self.config.ticket_ttl,
            chunk_bytes=self._chunk_bytes(),
            files=[pb.DistributedFile(set=f.set, path=f.path, size=f.size, sha256=f.sha256) for f in files.values()],
        )

    def Fetch(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        node_id = self._check_ticket(rpc.metadata_value(context, distribution.FETCH_TICKET))
        if node_id is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing, unknown or expired {distribution.FETCH_TICKET} (call Open first)")
        try:
            distribution.check_set(request.set)
            distribution.check_relative_path(request.path)
            entry = self.catalogue.cached().get((request.set, request.path))
        except distribution.UnsafePath as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if entry is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.set} file {request.path} is not in the catalogue")
        yield from self._stream(entry, context)
        log.debug("sent %s/%s (%d bytes) to %s", entry.set, entry.path, entry.size, node_id)

    def _stream(self, entry: CatalogueFile, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        chunk, limit, offset = self._chunk_bytes(), int(self.config.max_file_mb * MB), 0
        with open(entry.location, "rb") as handle:
            while block := handle.read(chunk):
                if offset + len(block) > limit:
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"{entry.set} file {entry.path} grew beyond distribution.max_file_mb")
                yield pb.FileChunk(data=block, offset=offset)
                offset += len(block)
        with self._lock:
            self.files_served += 1
            self.bytes_served += offset

    def _chunk_bytes(self) -> int:
        return max(1, int(self.config.chunk_kb)) * 1024

    def _issue(self, node_id: str) -> str:
        ticket = secrets.token_hex(32)
        with self._lock:
            self._tickets[ticket] = (node_id, time.monotonic() + self.config.ticket_ttl)
            while len(self._tickets) > MAX_OPEN_TICKETS:
                self._tickets.popitem(last=False)
        return ticket

    def _check_ticket(self, ticket: str) -> str | None:
        with self._lock:
            entry = self._tickets.get(ticket)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]


def distribution_servicer(config: CoordinatorConfig, bundle: Bundle, admission: Admission) -> DistributionServicer | None:
    """The servicer for the server bootstrap (None when `gateway.distribution.enabled` is off)."""
    if not config.gateway.distribution.enabled:
        return None
    return DistributionServicer(bundle, config.reference, Path(config.public_key).read_bytes(), admission,
                                config.gateway.distribution)

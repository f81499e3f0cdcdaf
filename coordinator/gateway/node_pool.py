"""gRPC channels to the nodes' HeadServices: parallel Score calls under one deadline, answers checked."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np

from coordinator.registry import NodeEntry
from shared_backbone.config import TLSConfig
from shared_backbone.protocol import rpc
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass
class _NodeChannel:
    key: tuple[str, str, int]
    channel: grpc.Channel
    stub: pb_grpc.HeadServiceStub


class NodePool:
    """gRPC channels to the nodes, renewed when a node re-registers (new endpoint or restart)."""

    def __init__(self, tls: TLSConfig, max_message_mb: int, credential: Callable[[str], str] | None = None) -> None:
        self.tls = tls
        self.max_message_mb = max_message_mb
        self.credential = credential  # node id -> the bearer its HeadService accepts (the gateway's credential)
        self._channels: dict[str, _NodeChannel] = {}
        self._ok: dict[str, bool] = {}
        self._lock = threading.Lock()

    def stub(self, entry: NodeEntry) -> pb_grpc.HeadServiceStub:
        key = (entry.node_id, entry.endpoint, entry.generation)
        with self._lock:
            current = self._channels.get(entry.node_id)
            if current is None or current.key != key:
                if current is not None:
                    current.channel.close()
                channel = rpc.open_channel(entry.endpoint, self.tls, self.max_message_mb)
                current = _NodeChannel(key, channel, pb_grpc.HeadServiceStub(channel))
                self._channels[entry.node_id] = current
            return current.stub

    def send(self, entries: list[NodeEntry], request: pb.ScoreRequest, timeout: float) -> list[tuple[NodeEntry, grpc.Future]]:
        """Starts every node's Score call at once; `collect` waits for them."""
        return [
            (entry, self.stub(entry).Score.future(request, timeout=timeout, metadata=self.metadata(entry)))
            for entry in entries
        ]

    def metadata(self, entry: NodeEntry) -> tuple[tuple[str, str], ...]:
        return rpc.bearer(self.credential(entry.node_id)) if self.credential else ()

    def collect(self, calls: list[tuple[NodeEntry, grpc.Future]], batch: int) -> tuple[dict[str, np.ndarray], list[str]]:
        """Raw scores per node id from every node that answered correctly in time, and the rest."""
        answered: dict[str, np.ndarray] = {}
        failed: list[str] = []
        for entry, call in calls:
            try:
                response = call.result()
                problem = _check_response(entry, response, batch)
            except grpc.RpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
            if problem:
                failed.append(entry.node_id)
            else:
                answered[entry.node_id] = np.asarray(response.raw_scores, dtype=np.float64)
            self._note(entry, problem)
        return answered, failed

    def _note(self, entry: NodeEntry, problem: str | None) -> None:
        """Logs a node's transitions between answering and failing, not every query."""
        was_ok = self._ok.get(entry.node_id, True)
        self._ok[entry.node_id] = problem is None
        if problem and was_ok:
            log.warning("node %s (%s at %s) did not answer: %s", entry.node_id, entry.source, entry.endpoint, problem)
        elif not problem and not was_ok:
            log.info("node %s (%s) answers again", entry.node_id, entry.source)

    def close(self) -> None:
        with self._lock:
            for item in self._channels.values():
                item.channel.close()
            self._channels.clear()


def _check_response(entry: NodeEntry, response: pb.ScoreResponse, batch: int) -> str | None:
    if len(response.raw_scores) != batch:
        return f"returned {len(response.raw_scores)} scores for {batch} images"
    if response.source != entry.source or response.head_digest != entry.head_digest:
        return f"serves {response.source}/{response.head_digest[:12]}, registered {entry.source}/{entry.head_digest[:12]}"
    return None

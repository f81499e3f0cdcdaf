"""Sending messages to Flower nodes and collecting their replies, every wait bounded in time."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from flwr.app import Message, RecordDict

from coordinator.flower.results import FederationError

log = logging.getLogger(__name__)


class GridLike(Protocol):
    """The part of Flower's Grid the coordinator uses (InMemoryGrid, the deployment grid)."""

    def get_node_ids(self) -> Any: ...

    def push_messages(self, messages: Any) -> Any: ...

    def pull_messages(self, message_ids: Any) -> Any: ...


def wait_for_nodes(grid: GridLike, min_nodes: int, timeout: float, poll: float = 0.5) -> list[int]:
    """The connected node ids once at least `min_nodes` are there; FederationError after `timeout`."""
    deadline = time.monotonic() + timeout
    nodes: list[int] = []
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= max(min_nodes, 1):
            log.info("%d node(s) connected", len(nodes))
            return nodes
        if time.monotonic() >= deadline:
            raise FederationError(f"only {len(nodes)} of the required {min_nodes} node(s) connected within {timeout:.0f} s")
        time.sleep(poll)


def send_and_collect(grid: GridLike, contents: dict[int, RecordDict], message_type: str, *, timeout: float,
                     poll: float = 1.0) -> dict[int, Message | None]:
    """Sends one message per node and waits (bounded) for replies; None = no reply in time.

    Replies are matched to requests by `reply_to_message_id`, never by `src_node_id` (a reply the
    SuperLink makes for a node that went away carries the SuperLink's id).
    """
    messages = [
        Message(content=content, dst_node_id=node, message_type=message_type, ttl=timeout + 60.0)
        for node, content in contents.items()
    ]
    message_ids = list(grid.push_messages(messages))
    by_message: dict[str, int] = {}
    replies: dict[int, Message | None] = {node: None for node in contents}
    for node, message_id in zip(contents, message_ids):
        if message_id:
            by_message[str(message_id)] = node
        else:
            log.warning("message to node %d could not be pushed", node)
    pending = set(by_message)
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(sorted(pending)):
            request_id = reply.metadata.reply_to_message_id
            if request_id in pending:
                replies[by_message[request_id]] = reply
                pending.discard(request_id)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    if pending:
        log.warning("%d node(s) did not reply within %.0f s", len(pending), timeout)
    return replies


def reply_size(message: Message) -> int:
    content = message.content
    size = 0
    for record in content.array_records.values():
        size += record.count_bytes()
    for record in (*content.config_records.values(), *content.metric_records.values()):
        size += len(json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in record.items()}))
    return size

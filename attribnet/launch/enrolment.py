"""Enrolment for networks started on one machine, where whoever runs the launcher is the admin of both sides.

A launcher that starts nodes it also registers enrols them itself, exactly as an admin would with
`attribnet coordinator enrol`: one token per node id and source, written 0600 where the node
reads it. A node id that is already bound to a key needs none (its key proves it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from coordinator.registry import Registry, RegistryError
from shared_backbone.model.signing import write_private

log = logging.getLogger(__name__)


def enrol_local_nodes(registry_path: str | Path, nodes: dict[str, tuple[str, Path]]) -> list[str]:
    """Enrols every node id (-> (source, token file)) not yet bound; returns the ids enrolled now (refusals logged)."""
    registry = Registry(registry_path)
    enrolled = []
    try:
        for node_id, (source, token_path) in sorted(nodes.items()):
            token_path = Path(token_path)
            if registry.bound_key(node_id) is not None:
                continue
            if token_path.is_file() and registry.enrolment(node_id) is not None:
                continue
            try:
                token = registry.enrol(node_id, source)
            except RegistryError as exc:  # its registration will be refused, and reported, like any other
                log.warning("not enrolled: %s", exc)
                continue
            write_private(token_path, (token + "\n").encode(), overwrite=True)
            enrolled.append(node_id)
    finally:
        registry.close()
    if enrolled:
        log.info("enrolled %d local node(s): %s", len(enrolled), ", ".join(enrolled))
    return enrolled

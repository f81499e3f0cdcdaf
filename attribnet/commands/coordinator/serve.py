"""`attribnet coordinator serve` (the query gateway + node registry) and `attribnet coordinator registry`."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path


def register(actions: argparse._SubParsersAction) -> None:
    serve = actions.add_parser("serve", help="serve the query gateway and the node registry over gRPC")
    serve.add_argument("--config", help="coordinator.yaml")
    serve.add_argument("--bundle", help="signed backbone bundle to serve (overrides `bundle`)")
    serve.add_argument("--public-key", help="coordinator public key that verifies the bundle")
    serve.add_argument("--registry", help="SQLite registry file (overrides `registry`)")
    serve.add_argument("--host", help="listen address (gateway.host)")
    serve.add_argument("--port", type=int, help="listen port (gateway.port; 0 = any free port)")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow plaintext gRPC off loopback (gateway.insecure)")
    serve.add_argument("--query-token-file", help="file whose first line is the query token (queries open if unset)")
    serve.set_defaults(handler=run_serve)

    enrol = actions.add_parser("enrol", help="issue a one-time enrolment token for one node id and source")
    enrol.add_argument("--source", required=True, help="the source the node will serve")
    enrol.add_argument("--node-id", help="the node's id (default: the source)")
    enrol.add_argument("--out", required=True, help="new file (0600) for the token, to hand to the node")
    enrol.add_argument("--config", help="coordinator.yaml")
    enrol.add_argument("--registry", help="SQLite registry file (overrides `registry`)")
    enrol.add_argument("--public-key", help="the coordinator's public key, whose fingerprint the node checks (overrides `public_key`)")
    enrol.add_argument("--new-registry", action="store_true",
                       help="start the registry file if it does not exist yet (the network's first enrolment)")
    enrol.set_defaults(handler=run_enrol)

    registry = actions.add_parser("registry", help="list the registered nodes, remove one, or clear a quarantine")
    registry.add_argument("operation", choices=("list", "remove", "clear"),
                          help="list the nodes, remove one (it must be enrolled again), or clear its quarantine/flag")
    registry.add_argument("node_id", nargs="?", help="node id to remove or clear")
    registry.add_argument("--config", help="coordinator.yaml")
    registry.add_argument("--registry", help="SQLite registry file (overrides `registry`)")
    registry.add_argument("--json", action="store_true", help="one JSON object per node per line")
    registry.set_defaults(handler=run_registry)


def _config(args: argparse.Namespace):
    from coordinator.config import CoordinatorConfig
    from shared_backbone.config import load_config

    overrides = {
        "bundle": getattr(args, "bundle", None),
        "public_key": getattr(args, "public_key", None),
        "registry": args.registry,
        "gateway.host": getattr(args, "host", None),
        "gateway.port": getattr(args, "port", None),
        "gateway.insecure": getattr(args, "insecure", None),
        "gateway.query_token_file": getattr(args, "query_token_file", None),
    }
    return load_config(CoordinatorConfig, args.config, overrides)


def run_serve(args: argparse.Namespace) -> int:
    from coordinator.gateway.server import serve_forever
    from shared_backbone.runtime.device import configure_tensorflow

    config = _config(args)
    configure_tensorflow(config.gateway.tf_threads)
    return serve_forever(config)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def run_enrol(args: argparse.Namespace) -> int:
    from coordinator.registry import Registry
    from shared_backbone.model.signing import write_private

    config = _config(args)
    if Path(args.out).exists():
        raise ValueError(f"{args.out} exists already; choose a new file for the token")
    registry = Registry(config.registry, create=args.new_registry)
    try:
        node_id = args.node_id or args.source
        token = registry.enrol(node_id, args.source)
    finally:
        registry.close()
    try:
        write_private(args.out, (token + "\n").encode())
    except FileExistsError:
        raise ValueError(f"{args.out} exists already; choose a new file for the token") from None
    print(f"enrolled node {node_id} for source {args.source} in {Path(config.registry).resolve()}: token in {args.out} "
          "(one use; give it to the node as serve.enrolment_token_file)")
    _print_handover(config, node_id, args.source, args.out)
    return 0


def _print_handover(config, node_id: str, source: str, token_file: str) -> None:
    """What the admin hands the organisation: the token file, the gateway address and the key's fingerprint."""
    from shared_backbone.model.signing import SignatureError, fingerprint, load_public_key

    try:
        print_fingerprint = fingerprint(load_public_key(config.public_key))
    except (FileNotFoundError, SignatureError) as exc:
        print(f"no fingerprint to hand over: {exc} (pass --public-key)")
        return
    gateway = f"{config.gateway.host}:{config.gateway.port}"
    print(f"coordinator key fingerprint: sha256:{print_fingerprint}")
    print(f"hand over the token file, the gateway address ({gateway} as the node reaches it) and the fingerprint; the node "
          f"joins with:\n  attribnet node join --gateway {gateway} --token-file {Path(token_file).name} "
          f"--fingerprint sha256:{print_fingerprint} --source {source}"
          + (f" --node-id {node_id}" if node_id != source else "") + " --images IMAGES --state-dir STATE_DIR")


def _change(registry, operation: str, node_id: str | None, where: str) -> int:
    if not node_id:
        raise ValueError(f"registry {operation} needs a NODE_ID")
    if operation == "remove":
        if not registry.remove(node_id):
            raise ValueError(f"node id {node_id!r} is not in {where}")
        print(f"removed node {node_id}; enrol it again to let it back")
        return 0
    from coordinator.registry import UnknownNode

    try:
        registry.clear(node_id)
    except UnknownNode:
        raise ValueError(f"node id {node_id!r} is not in {where}") from None
    print(f"cleared node {node_id}: no longer quarantined or flagged")
    return 0


def run_registry(args: argparse.Namespace) -> int:
    from coordinator.registry import Registry

    config = _config(args)
    registry = Registry(config.registry, stale_after=config.gateway.stale_after, audit=bool(config.gateway.audit.reference),
                        create=False)
    try:
        if args.operation != "list":
            return _change(registry, args.operation, args.node_id, config.registry)
        entries = registry.list()
    finally:
        registry.close()
    if args.json:
        for entry in entries:
            print(json.dumps({**entry.to_dict(), "status_reason": entry.status_reason, "last_heartbeat": _when(entry.last_heartbeat),
                              "registered_at": _when(entry.registered_at)}, sort_keys=True))
        return 0
    if not entries:
        print(f"no nodes registered in {config.registry}")
        return 0
    header = ("node_id", "source", "status", "endpoint", "backbone", "head", "last heartbeat", "reason")
    rows = [
        (e.node_id, e.source, e.status, e.endpoint, e.backbone_digest[:12], e.head_digest[:12], _when(e.last_heartbeat),
         e.status_reason or e.flag)
        for e in entries
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0

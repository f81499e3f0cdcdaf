"""`attribnet coordinator serve` (the query gateway + node registry) and `attribnet coordinator registry`."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone


def register(actions: argparse._SubParsersAction) -> None:
    serve = actions.add_parser("serve", help="serve the query gateway and the node registry over gRPC")
    serve.add_argument("--config", help="coordinator.yaml")
    serve.add_argument("--bundle", help="signed backbone bundle to serve (overrides `bundle`)")
    serve.add_argument("--public-key", help="coordinator public key that verifies the bundle")
    serve.add_argument("--registry", help="SQLite registry file (overrides `registry`)")
    serve.add_argument("--host", help="listen address (gateway.host)")
    serve.add_argument("--port", type=int, help="listen port (gateway.port; 0 = any free port)")
    serve.add_argument("--registration-token-file", help="file whose first line is the nodes' registration token")
    serve.add_argument("--query-token-file", help="file whose first line is the query token (queries open if unset)")
    serve.set_defaults(handler=run_serve)

    registry = actions.add_parser("registry", help="list or remove the registered nodes")
    registry.add_argument("operation", choices=("list", "remove"), help="list the nodes, or remove one")
    registry.add_argument("node_id", nargs="?", help="node id to remove")
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
        "gateway.registration_token_file": getattr(args, "registration_token_file", None),
        "gateway.query_token_file": getattr(args, "query_token_file", None),
    }
    return load_config(CoordinatorConfig, args.config, overrides)


def run_serve(args: argparse.Namespace) -> int:
    from coordinator.gateway.server import serve_forever
    from shared_backbone.model.device import configure_tensorflow

    config = _config(args)
    configure_tensorflow(config.gateway.tf_threads)
    return serve_forever(config)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def run_registry(args: argparse.Namespace) -> int:
    from coordinator.registry import Registry

    config = _config(args)
    registry = Registry(config.registry, stale_after=config.gateway.stale_after)
    try:
        if args.operation == "remove":
            if not args.node_id:
                raise ValueError("registry remove needs a NODE_ID")
            if not registry.remove(args.node_id):
                raise ValueError(f"node id {args.node_id!r} is not in {config.registry}")
            print(f"removed node {args.node_id}")
            return 0
        entries = registry.list()
    finally:
        registry.close()
    if args.json:
        for entry in entries:
            print(json.dumps({**entry.__dict__, "last_heartbeat": _when(entry.last_heartbeat),
                              "registered_at": _when(entry.registered_at)}, sort_keys=True))
        return 0
    if not entries:
        print(f"no nodes registered in {config.registry}")
        return 0
    header = ("node_id", "source", "status", "endpoint", "backbone", "head", "last heartbeat")
    rows = [
        (e.node_id, e.source, e.status, e.endpoint, e.backbone_digest[:12], e.head_digest[:12], _when(e.last_heartbeat))
        for e in entries
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0

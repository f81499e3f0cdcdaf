"""`attribnet node serve`: serve this node's head over gRPC and keep it registered with the coordinator."""

from __future__ import annotations

import argparse


def register(actions: argparse._SubParsersAction) -> None:
    serve = actions.add_parser("serve", help="serve the head (HeadService) and register with the coordinator")
    serve.add_argument("--config", help="node.yaml")
    serve.add_argument("--state-dir", help="node state folder holding head/ (overrides `state_dir`)")
    serve.add_argument("--backbone", help="signed backbone bundle the head was trained on")
    serve.add_argument("--public-key", help="coordinator public key that verifies the bundle")
    serve.add_argument("--node-id", help="this node's id in the registry (default: the source)")
    serve.add_argument("--host", help="listen address (serve.host)")
    serve.add_argument("--port", type=int, help="listen port (serve.port)")
    serve.add_argument("--advertise", help="host:port the coordinator dials (serve.advertise)")
    serve.add_argument("--coordinator", help="coordinator host:port (serve.coordinator)")
    serve.add_argument("--enrolment-token-file",
                       help="file with the admin's one-time enrolment token (serve.enrolment_token_file)")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="allow plaintext gRPC off loopback (serve.insecure)")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from node.config import NodeConfig
    from node.server import serve_forever
    from shared_backbone.config import load_config
    from shared_backbone.runtime.device import configure_tensorflow

    config = load_config(
        NodeConfig,
        args.config,
        {
            "state_dir": args.state_dir,
            "backbone": args.backbone,
            "public_key": args.public_key,
            "node_id": args.node_id,
            "serve.host": args.host,
            "serve.port": args.port,
            "serve.advertise": args.advertise,
            "serve.coordinator": args.coordinator,
            "serve.enrolment_token_file": args.enrolment_token_file,
            "serve.insecure": args.insecure,
        },
    )
    configure_tensorflow(config.serve.tf_threads)
    return serve_forever(config)

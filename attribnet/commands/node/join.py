"""`attribnet node join`: join a running network with one command (fetch, verify, train, serve)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("attribnet.node")


def register(actions: argparse._SubParsersAction) -> None:
    join = actions.add_parser(
        "join", help="join a running network: fetch + verify the bundle, key and reference set, train, serve, register",
        description="Fetches the coordinator's signed bundle, public key and reference set from its gateway, verifies "
                    "them (key fingerprint, bundle signature, reference digest), writes STATE_DIR/node.yaml, trains "
                    "and calibrates the head, then serves it and registers until SIGINT/SIGTERM. A rerun resumes.")
    join.add_argument("--gateway", required=True, metavar="HOST:PORT", help="the coordinator's gateway")
    join.add_argument("--token-file", required=True, help="the enrolment token file the admin handed over")
    join.add_argument("--fingerprint", required=True,
                      help="sha256 fingerprint of the coordinator's public key (printed by `attribnet coordinator enrol`)")
    join.add_argument("--source", required=True, help="the generator this node attributes (the one it was enrolled for)")
    join.add_argument("--images", required=True, help="folder of the organisation's own images of that source")
    join.add_argument("--state-dir", required=True, help="the node's state folder (bundle, reference set, head, node.yaml)")
    join.add_argument("--node-id", help="the node id it was enrolled as (default: the source)")
    join.add_argument("--config", help="node YAML with training/serving settings to start from (paths are set by join)")
    join.add_argument("--host", help="listen address of the node's HeadService (serve.host)")
    join.add_argument("--port", type=int, help="listen port of the node's HeadService (serve.port)")
    join.add_argument("--advertise", help="host:port the coordinator dials (serve.advertise)")
    join.add_argument("--insecure", action="store_true", default=None,
                      help="allow plaintext gRPC off loopback (serve.insecure)")
    join.add_argument("--epochs", type=int, help="maximum head training epochs (train.epochs)")
    join.add_argument("--negatives", type=int, help="self-made negatives (negatives.count)")
    join.add_argument("--max-file-mb", type=float, default=256.0, help="refuse any fetched file larger than this")
    join.add_argument("--max-total-mb", type=float, default=2048.0, help="refuse fetching more than this in total")
    join.add_argument("--no-serve", action="store_true", help="stop after training (serve later with node serve --config)")
    join.set_defaults(handler=run_join)


def run_join(args: argparse.Namespace) -> int:
    from node.config import NodeConfig
    from node.fetch import MB, FetchLimits
    from node.join import JoinSettings, join
    from shared_backbone.config import load_config
    from shared_backbone.runtime.device import configure_tensorflow

    if args.max_file_mb <= 0 or args.max_total_mb <= 0:
        raise ValueError("--max-file-mb and --max-total-mb must be positive")
    base = load_config(NodeConfig, args.config, {
        "serve.host": args.host, "serve.port": args.port, "serve.advertise": args.advertise, "serve.insecure": args.insecure,
        "train.epochs": args.epochs, "negatives.count": args.negatives,
    })
    settings = JoinSettings(
        gateway=args.gateway, token_file=args.token_file, fingerprint=args.fingerprint, source=args.source,
        images=args.images, state_dir=args.state_dir, node_id=args.node_id or "",
        limits=FetchLimits(int(args.max_file_mb * MB), int(args.max_total_mb * MB)), base=base,
    )
    # One process trains, then serves: TensorFlow's thread pools are fixed at its first op, so
    # serve.tf_threads applies only when the node is restarted with `attribnet node serve`.
    configure_tensorflow(0)
    config = join(settings)
    if args.no_serve:
        log.info("joined; serve with: attribnet node serve --config %s/node.yaml", config.state_dir)
        return 0
    from node.server import serve_forever

    log.info("join step 5/5: serve the head on %s:%d and register with %s (until SIGINT/SIGTERM)", config.serve.host,
             config.serve.port, config.serve.coordinator)
    return serve_forever(config)

"""`attribnet node import-paper-head`: one of the paper's attribution models as this node's head."""

from __future__ import annotations

import argparse
import json


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "import-paper-head",
        help="turn the paper's attribution HDF5 file into a head bound to a backbone bundle",
        description="Refuses a file whose trunk (dConv_01..dConv_04, dBNorm_02..04) differs from the bundle's.",
    )
    parser.add_argument("file", metavar="FILE.h5", help="Keras 2 HDF5 file of an attribution model (d* + a* layers)")
    parser.add_argument("--config", help="node YAML (backbone, public_key, source)")
    parser.add_argument("--backbone", help="backbone bundle folder the head must fit")
    parser.add_argument("--source", help="the source this head recognises (e.g. progan_celeba)")
    parser.add_argument("--out", required=True, help="new head folder")
    parser.add_argument("--public-key", help="coordinator public key to verify the bundle's signature")
    parser.add_argument("--threshold", type=float, help="calibrated score a head must reach to attribute (default 0.5)")
    parser.add_argument("--json", action="store_true", help="print the head's summary as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from node.config import NodeConfig
    from node.import_head import import_paper_head
    from shared_backbone.config import load_config

    config = load_config(
        NodeConfig,
        args.config,
        {"backbone": args.backbone, "public_key": args.public_key, "source": args.source, "threshold": args.threshold},
    )
    if not config.backbone:
        raise ValueError("no backbone bundle given (--backbone or `backbone:` in --config)")
    head = import_paper_head(
        args.file, config.backbone, config.source, args.out, public_key_path=config.public_key or None, threshold=config.threshold
    )
    summary = {"head": args.out, "source": head.source, "backbone_digest": head.backbone_digest, "weights_sha256": head.digest}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"head {args.out} for source {head.source}, bound to backbone {head.backbone_digest[:12]}")
    return 0

"""`attribnet node train | evaluate`: this node's head on the coordinator's frozen backbone."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from shared_backbone.training.classification_metrics import describe_binary

log = logging.getLogger("attribnet.node")


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="node YAML (NodeConfig keys)")
    parser.add_argument("--source", help="this node's generator: its folder name under --data (source)")
    parser.add_argument("--data", help="local dataset folder, one sub-folder per source (data.root)")
    parser.add_argument("--backbone", help="verified backbone bundle folder (backbone)")
    parser.add_argument("--public-key", help="coordinator public key that must have signed the bundle (public_key)")
    parser.add_argument("--reference", help="the coordinator's reference set folder, negatives (reference)")
    parser.add_argument("--state-dir", help="node state folder; the head goes to STATE/head (state_dir)")


def register(actions: argparse._SubParsersAction) -> None:
    train = actions.add_parser("train", help="train, calibrate and store this node's head")
    _add_flags(train)
    train.add_argument("--epochs", type=int, help="maximum epochs (train.epochs)")
    train.add_argument("--batch-size", type=int, help="train.batch_size")
    train.add_argument("--seed", type=int, help="train.seed")
    train.add_argument("--calibration", choices=("platt", "temperature", "identity"), help="calibration")
    train.add_argument("--access", choices=("strict", "shared"),
                       help="strict (default): own images, reference set, self-made negatives; shared: the paper's "
                            "comparison setting, every other folder under --data is a negative too")
    train.add_argument("--init-head", help="retrain from this head folder (init_head), e.g. on perturbed data")
    train.add_argument("--perturb", action="append", metavar="KIND", help="train on perturbations: blur, crop, jpeg, noise or multi (perturb.kinds)")
    train.add_argument("--negatives", type=int, help="self-made negatives (negatives.count; 0 = none)")
    train.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    train.add_argument("--json", action="store_true", help="print the head's metrics as JSON (stdout holds only the JSON; no progress bar)")
    train.set_defaults(handler=run_train)

    evaluate = actions.add_parser("evaluate", help="one-vs-rest metrics of this node's head")
    _add_flags(evaluate)
    evaluate.add_argument(
        "--perturbation", action="append", metavar="P", help="clean, jpeg75, blur1 or KIND:VALUE (repeatable; default clean)"
    )
    evaluate.add_argument("--split", choices=("test", "calib", "val", "train"), default="test")
    evaluate.add_argument("--out", help="report folder (default: STATE/evaluation)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(handler=run_evaluate)


def _config(args: argparse.Namespace, extra: dict | None = None):
    from node.config import NodeConfig
    from shared_backbone.config import load_config

    overrides = {
        "source": args.source, "data.root": args.data, "backbone": args.backbone, "public_key": args.public_key,
        "reference": args.reference, "state_dir": args.state_dir, **(extra or {}),
    }
    config = load_config(NodeConfig, args.config, overrides)
    if not config.data.root:
        raise ValueError("no local dataset: set data.root in --config or pass --data")
    return config


def run_train(args: argparse.Namespace) -> int:
    from node.train_head import train_head

    config = _config(args, {
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.seed": args.seed,
        "calibration": args.calibration, "access": args.access, "init_head": args.init_head,
        "perturb.kinds": args.perturb, "negatives.count": args.negatives,
    })
    result = train_head(config, progress=not (args.no_progress or args.json))  # --json: stdout holds JSON only
    if args.json:
        print(json.dumps({"head_dir": str(result.head_dir), "metrics": result.metrics}, indent=2))
        return 0
    print(f"head for {config.source} in {result.head_dir} (backbone {result.head.backbone_digest[:12]})")
    access = result.metrics["data_access"]
    print(f"access {access['access']}: own images, reference sources {', '.join(access['reference_sources']) or 'none'}, "
          f"{result.metrics['self_made_negatives']} self-made negatives"
          + (f"; ignored local folders: {', '.join(access['ignored_local_sources'])}" if access["ignored_local_sources"] else ""))
    for split in ("calib", "test"):
        if split in result.metrics:
            for kind in ("raw", "calibrated"):
                print(f"{split:5s} {kind:10s} {describe_binary(result.metrics[split][kind])}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from node.train_head import evaluate_head
    from shared_backbone.training.reports import write_json

    config = _config(args)
    out = Path(args.out) if args.out else Path(config.state_dir) / "evaluation"
    results = evaluate_head(config, perturbations=args.perturbation or ["clean"], out_dir=out, split=args.split)
    metrics = {name: r["metrics"] for name, r in results.items()}
    write_json(out / "metrics.json", metrics)
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    for name, m in metrics.items():
        print(f"{name:8s} calibrated {describe_binary(m)}")
        print(f"{name:8s} raw        {describe_binary(m['raw'])}")
    print(f"reports in {out}")
    return 0

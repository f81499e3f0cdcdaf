"""`attribnet bench baseline`: a centralized baseline (gdaconv, postpool, dctlinear) on one task."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("attribnet.bench")


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("baseline", help="train and test a centralized baseline (clean and perturbed)")
    parser.add_argument("--config", help="YAML with BaselineConfig keys")
    parser.add_argument("--model", choices=("gdaconv", "postpool", "dctlinear"), help="model")
    parser.add_argument("--task", choices=("detection", "ovr", "multiclass"), help="task")
    parser.add_argument("--source", help="positive source for --task ovr (positive_source)")
    parser.add_argument("--data", help="dataset folder (data.root)")
    parser.add_argument("--image-size", type=int, help="data.image_size")
    parser.add_argument("--mode", choices=("pixel", "dct"), help="input of gdaconv/postpool (data.mode)")
    parser.add_argument("--normstats", help="DCT normstats folder (data.normstats)")
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--out", help="new run folder (out)")
    parser.add_argument(
        "--perturbation", action="append", metavar="P",
        help="test set: clean, jpeg75, blur1 or KIND:VALUE (repeatable; default clean, jpeg75, blur1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from shared_backbone.benchmark import DEFAULT_PERTURBATIONS, run_baseline
    from shared_backbone.config import BaselineConfig, load_config

    config = load_config(BaselineConfig, args.config, {
        "model": args.model, "task": args.task, "positive_source": args.source, "data.root": args.data,
        "data.image_size": args.image_size, "data.mode": args.mode, "data.normstats": args.normstats,
        "train.epochs": args.epochs, "train.seed": args.seed, "out": args.out,
    })
    if not config.data.root:
        raise ValueError("no dataset: set data.root in --config or pass --data")
    perturbations = tuple(args.perturbation or DEFAULT_PERTURBATIONS)
    result = run_baseline(config, perturbations=perturbations, progress=not args.no_progress)
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "classes": result.classes, "metrics": result.metrics}, indent=2, default=str))
        return 0
    print(f"{config.model} {config.task} ({', '.join(result.classes)}); reports in {result.run_dir}")
    for name in perturbations:
        m = result.metrics[name]
        extra = ""
        if "fake_argmax" in m:
            extra = f"  fake-only argmax {m['fake_argmax']['accuracy']:.4f}"
        elif "roc_auc" in m:
            extra = f"  F1 {m['f1']:.4f}  ROC-AUC {m['roc_auc']:.4f}"
        macro = f"  macro F1 {m['macro']['f1']:.4f}" if "macro" in m else ""
        print(f"{name:8s} accuracy {m['accuracy']:.4f}{macro}{extra}")
    return 0

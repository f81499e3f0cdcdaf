"""`attribnet bench baseline | attribution`: centralized baselines, and bundle + heads on the same test split."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from shared_backbone.model.preprocessing import MODES

log = logging.getLogger("attribnet.bench")


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("baseline", help="train and test a centralized baseline (clean and perturbed)")
    parser.add_argument("--config", help="YAML with BaselineConfig keys")
    parser.add_argument("--model", choices=("gdaconv", "postpool", "dctlinear"), help="model")
    parser.add_argument("--task", choices=("detection", "ovr", "multiclass"), help="task")
    parser.add_argument("--source", help="positive source for --task ovr (positive_source)")
    parser.add_argument("--data", help="dataset folder (data.root)")
    parser.add_argument("--image-size", type=int, help="data.image_size")
    parser.add_argument("--mode", choices=MODES, help="input of gdaconv/postpool (data.mode)")
    parser.add_argument("--normstats", help="DCT normstats folder (data.normstats)")
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--out", help="new run folder (out)")
    parser.add_argument(
        "--perturbation", action="append", metavar="P",
        help="test set: clean, jpeg75, blur1 or KIND:VALUE (repeatable; default clean, jpeg75, blur1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar (none with --json either)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(handler=run)

    attribution = actions.add_parser(
        "attribution", help="multiclass attribution of a bundle + its heads on a dataset's test split"
    )
    attribution.add_argument("--backbone", required=True, help="bundle folder")
    attribution.add_argument("--head", dest="heads", action="append", required=True, metavar="HEAD",
                             help="head folder (repeat: one per source)")
    attribution.add_argument("--public-key", help="verify the bundle's signature with this key")
    attribution.add_argument("--data", required=True, help="dataset folder with the heads' sources and real images")
    attribution.add_argument("--real", action="append", metavar="SOURCE", help="real source folder(s) (default: real)")
    attribution.add_argument(
        "--perturbation", action="append", metavar="P", help="clean, jpeg75, blur1 or KIND:VALUE (default all three named)"
    )
    attribution.add_argument("--out", required=True, help="report folder")
    attribution.add_argument("--json", action="store_true", help="print the metrics as JSON")
    attribution.set_defaults(handler=run_attribution)


def run_attribution(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shared_backbone.config import DataConfig
    from attribnet.lab.baselines.centralized import DEFAULT_PERTURBATIONS
    from shared_backbone.training.evaluation import evaluate_network
    from shared_backbone.model.bundle import load_bundle
    from shared_backbone.model.heads import read_head_meta
    from shared_backbone.model.signing import load_public_key

    bundle = load_bundle(args.backbone, load_public_key(args.public_key) if args.public_key else None)
    heads = {read_head_meta(path)["source"]: Path(path) for path in args.heads}
    data = DataConfig(root=args.data, real_sources=args.real or ["real"], image_size=bundle.input_spec.image_size)
    results = evaluate_network(bundle, heads, data, list(args.perturbation or DEFAULT_PERTURBATIONS), Path(args.out))
    metrics = {name: r["metrics"] for name, r in results.items()}
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
        return 0
    for name, m in metrics.items():
        fake = m.get("fake_argmax", {}).get("accuracy", float("nan"))
        print(
            f"{name:8s} detection {m['detection']['accuracy']:.4f}  multiclass {m['multiclass']['accuracy']:.4f}  "
            f"open-set {m['open_set']['accuracy']:.4f}  fake-only argmax {fake:.4f}"
        )
    print(f"reports in {args.out}")
    return 0


def dataset_image_size(args: argparse.Namespace) -> int | None:
    """--image-size, else the dataset's own size from its manifest (zoo, upscalers) unless the YAML
    names one: a 128-px zoo is judged at 128 px without being told twice."""
    from shared_backbone.config import read_yaml

    if args.image_size or not args.data:
        return args.image_size
    if args.config and "image_size" in ((read_yaml(args.config).get("data") or {})):
        return None
    manifest = Path(args.data) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        size = json.loads(manifest.read_text()).get("image_size")
    except (ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and size > 0 else None


def run(args: argparse.Namespace) -> int:
    from shared_backbone.config import load_config
    from attribnet.lab.baselines.centralized import DEFAULT_PERTURBATIONS, BaselineConfig, run_baseline

    config = load_config(BaselineConfig, args.config, {
        "model": args.model, "task": args.task, "positive_source": args.source, "data.root": args.data,
        "data.image_size": dataset_image_size(args), "data.mode": args.mode, "data.normstats": args.normstats,
        "train.epochs": args.epochs, "train.seed": args.seed, "out": args.out,
    })
    if not config.data.root:
        raise ValueError("no dataset: set data.root in --config or pass --data")
    perturbations = tuple(args.perturbation or DEFAULT_PERTURBATIONS)
    result = run_baseline(config, perturbations=perturbations, progress=not (args.no_progress or args.json))  # --json: stdout is the JSON alone
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

"""`attribnet coordinator train | evaluate | publish`: the primary module and its signed bundle."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from shared_backbone.model.preprocessing import MODES
from shared_backbone.training.classification_metrics import describe_binary

log = logging.getLogger("attribnet.coordinator")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="coordinator YAML (CoordinatorConfig keys)")
    parser.add_argument("--data", help="dataset folder (data.root)")
    parser.add_argument("--image-size", type=int, help="square input size, a multiple of 16 (data.image_size)")
    parser.add_argument("--mode", choices=MODES, help="model input (data.mode)")
    parser.add_argument("--normstats", help="DCT normstats folder (data.normstats)")


def register(actions: argparse._SubParsersAction) -> None:
    train = actions.add_parser("train", help="train the primary (real vs. fake) module")
    _add_data_flags(train)
    train.add_argument("--epochs", type=int, help="maximum epochs (train.epochs)")
    train.add_argument("--batch-size", type=int, help="train.batch_size")
    train.add_argument("--seed", type=int, help="train.seed")
    train.add_argument("--out", help="new run folder (run_dir)")
    train.add_argument("--init-from", help="start from this run or bundle's primary module (retraining, e.g. on perturbed data)")
    train.add_argument("--perturb", action="append", metavar="KIND", help="train on perturbations: blur, crop, jpeg, noise or multi (perturb.kinds)")
    train.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    train.set_defaults(handler=run_train)

    evaluate = actions.add_parser("evaluate", help="the primary module's detection metrics on the test split")
    target = evaluate.add_mutually_exclusive_group()
    target.add_argument("--run", help="training run folder (default: run_dir of --config)")
    target.add_argument("--bundle", help="a published bundle folder instead of a run")
    _add_data_flags(evaluate)
    evaluate.add_argument("--public-key", help="verify --bundle with this key (default: public_key of --config)")
    evaluate.add_argument(
        "--perturbation", action="append", metavar="P",
        help="clean, jpeg75, blur1 or KIND:VALUE (repeatable; default clean)",
    )
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--out", help="report folder (default: RUN/evaluation)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(handler=run_evaluate)

    publish = actions.add_parser("publish", help="sign a trained primary module into a backbone bundle")
    publish.add_argument("run", metavar="RUN", help="training run folder")
    publish.add_argument("--out", required=True, help="new bundle folder")
    publish.add_argument("--config", help="coordinator YAML (private_key)")
    publish.add_argument("--key", help="coordinator private key (default: private_key of --config)")
    publish.add_argument("--version", help="bundle version (default: UTC timestamp)")
    publish.add_argument("--parent", help="version of the bundle this one replaces")
    publish.add_argument("--reference", help="reference set folder whose digest the bundle announces (default: `reference` of --config)")
    publish.add_argument("--json", action="store_true", help="print the bundle summary as JSON")
    publish.set_defaults(handler=run_publish)


def _config(args: argparse.Namespace, extra: dict | None = None):
    from coordinator.config import CoordinatorConfig
    from shared_backbone.config import load_config

    overrides = {
        "data.root": getattr(args, "data", None),
        "data.image_size": getattr(args, "image_size", None),
        "data.mode": getattr(args, "mode", None),
        "data.normstats": getattr(args, "normstats", None),
        **(extra or {}),
    }
    return load_config(CoordinatorConfig, args.config, overrides)


def run_train(args: argparse.Namespace) -> int:
    from coordinator.train_primary import train_primary

    config = _config(args, {
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.seed": args.seed, "run_dir": args.out,
        "init_from": args.init_from, "perturb.kinds": args.perturb,
    })
    if not config.data.root:
        raise ValueError("no dataset: set data.root in --config or pass --data")
    result = train_primary(config, progress=not (args.no_progress or args.json))  # --json: stdout holds JSON only
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "metrics": result.metrics}, indent=2))
        return 0
    print(f"run folder {result.run_dir} (kept epoch {result.metrics['best_epoch']} of {result.metrics['epochs_run']})")
    for split in ("val", "test"):
        if split in result.metrics:
            print(f"{split:5s} {describe_binary(result.metrics[split], 'fake')}")
    print(f"next: attribnet coordinator publish {result.run_dir} --out BUNDLE")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from coordinator.train_primary import read_run
    from shared_backbone.data.datasets import load_split
    from shared_backbone.training.fit import detection_labels
    from shared_backbone.training.evaluation import evaluate_binary, sample_ids
    from shared_backbone.training.reports import write_json
    from shared_backbone.model.bundle import load_bundle
    from shared_backbone.model.signing import load_public_key

    config = _config(args)
    if args.bundle:
        key_path = args.public_key or (config.public_key if Path(config.public_key).is_file() else "")
        if not key_path:
            log.warning("no public key: checking %s's file digests only, not its signature", args.bundle)
        bundle = load_bundle(args.bundle, load_public_key(key_path) if key_path else None)
        model, spec = bundle.load_primary(), bundle.input_spec
        default_out = Path(args.bundle).with_name(Path(args.bundle).name + "-evaluation")
    else:
        run = Path(args.run or config.run_dir)
        model, spec, _ = read_run(run)
        default_out = run / "evaluation"
    if not config.data.root:
        raise ValueError("no dataset: set data.root in --config or pass --data")
    data = config.data
    if (data.image_size, data.mode) != (spec.image_size, spec.mode):
        log.info("using the model's input %s %d px (config said %s %d px)", spec.mode, spec.image_size, data.mode, data.image_size)
    index, splits = load_split(data)
    samples = splits[args.split]
    if not samples:
        raise ValueError(f"{index.root}: the {args.split} split is empty")
    out = Path(args.out) if args.out else default_out
    results = evaluate_binary(
        model, samples, detection_labels(index, samples), spec, args.perturbation or ["clean"], out,
        ids=sample_ids(samples, index.root),
    )
    write_json(out / "metrics.json", {name: r["metrics"] for name, r in results.items()})
    if args.json:
        print(json.dumps({name: r["metrics"] for name, r in results.items()}, indent=2, default=str))
        return 0
    for name, result in results.items():
        print(f"{name:8s} {describe_binary(result['metrics'], 'fake')}")
    print(f"reports in {out}")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    from coordinator.publish import publish

    config = _config(args) if args.config or not args.key else None
    key = args.key or config.private_key
    reference = args.reference or (config.reference if config else "")
    bundle = publish(args.run, args.out, key, version=args.version, parent=args.parent, reference=reference or None)
    summary = {"path": str(bundle.path), "version": bundle.version, "digest": bundle.digest, "parent": bundle.manifest.get("parent")}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"bundle {bundle.path} version {bundle.version} digest {bundle.digest}")
    return 0

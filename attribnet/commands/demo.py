"""`attribnet demo`: the paper's workflow end to end on the fingerprint zoo, offline, in minutes.

Writes the zoo, a coordinator key, trains and publishes the primary module as a signed bundle,
trains one head per generator as its node would, evaluates bundle + heads (detection, one-vs-rest,
multiclass argmax; clean, JPEG q75, blur sigma 1) against centralized baselines, and writes
report.json + report.md (with the PNG paths) into --out.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("attribnet.demo")

# A few-seconds-per-step variant for CI and a first look (`--tiny`).
TINY = {
    "zoo.image_size": 32, "zoo.per_source": 40,
    "primary.epochs": 5, "head.epochs": 3, "baseline.epochs": 3,
    "perturbations": ["clean", "jpeg75"],
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole story offline on the fingerprint zoo (~5 min)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML with DemoConfig keys (e.g. configs/demo.yaml)")
    parser.add_argument("--out", default="demo-out", help="folder for everything the demo writes (default demo-out)")
    parser.add_argument("--data", help="use this existing zoo/dataset folder instead of writing one (data_root)")
    parser.add_argument("--tiny", action="store_true", help="tiny zoo and few epochs (seconds, not minutes)")
    parser.add_argument("--image-size", type=int, help="zoo image size (zoo.image_size)")
    parser.add_argument("--per-source", type=int, help="zoo images per source (zoo.per_source)")
    parser.add_argument("--mode", choices=("pixel", "dct"), help="input of the primary module and heads (mode)")
    parser.add_argument("--seed", dest="seeds", type=int, action="append", help="training seed (repeatable: one run per seed)")
    parser.add_argument("--json", action="store_true", help="print report.json instead of the Markdown report")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from attribnet.demo import run_demo
    from shared_backbone.config import DemoConfig, load_config

    overrides = dict(TINY) if args.tiny else {}
    overrides.update({
        "data_root": args.data, "mode": args.mode, "zoo.image_size": args.image_size, "zoo.per_source": args.per_source, "seeds": args.seeds,
    })
    config = load_config(DemoConfig, args.config, overrides)
    began = time.monotonic()

    def step(label: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {label}", flush=True)

    run_demo(config, args.out, step=step)
    out = Path(args.out)
    if args.json:
        print((out / "report.json").read_text())
    else:
        print()
        print((out / "report.md").read_text())
        print(f"report: {out / 'report.md'} and {out / 'report.json'}")
    return 0

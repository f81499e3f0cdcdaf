"""`attribnet demo`: the whole network on one machine, on the built-in fingerprint zoo.

Default (the network): writes the zoo, a coordinator key, trains and publishes the primary module
as a signed bundle, runs a Flower federation in which one node per generator verifies the bundle
and trains + calibrates its head, starts the node services and the gateway as real processes,
queries the held-out test images through the gateway and prints the attribution report
(network-report.md/.json, confusion matrix PNG). `--serve` then keeps the network up until
SIGINT/SIGTERM.

`--offline`: the paper's workflow in one process instead: heads trained as nodes would, evaluated
with detection, one-vs-rest and multiclass metrics on clean and perturbed test sets next to the
centralized baselines (report.md/.json).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from shared_backbone.model.preprocessing import MODES

log = logging.getLogger("attribnet.demo.offline")

# A few-seconds-per-step variant for CI and a first look (`--tiny`).
TINY = {
    "zoo.image_size": 32, "zoo.per_source": 40,
    "primary.epochs": 5, "head.epochs": 3, "baseline.epochs": 3,
    "perturbations": ["clean", "jpeg75"],
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the whole network on one machine on the fingerprint zoo (~4 min)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML with DemoConfig keys (e.g. configs/demo.yaml)")
    parser.add_argument("--out", default="demo-out", help="folder for everything the demo writes (default demo-out)")
    parser.add_argument("--offline", action="store_true", help="the paper's workflow in one process, with baselines and perturbed test sets")
    parser.add_argument("--serve", action="store_true", help="keep the network up after the report until Ctrl-C / SIGTERM")
    parser.add_argument("--port", type=int, default=0, help="gateway port with --serve (default: a free port)")
    parser.add_argument("--data", help="use this existing zoo/dataset folder instead of writing one (data_root)")
    parser.add_argument("--tiny", action="store_true", help="tiny zoo and few epochs (seconds, not minutes)")
    parser.add_argument("--image-size", type=int, help="zoo image size (zoo.image_size)")
    parser.add_argument("--per-source", type=int, help="zoo images per source (zoo.per_source)")
    parser.add_argument("--mode", choices=MODES, help="input of the primary module and heads (mode)")
    parser.add_argument("--seed", dest="seeds", type=int, action="append", help="training seed (repeatable: one run per seed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.set_defaults(handler=run)


def config_overrides(args: argparse.Namespace) -> dict:
    """The `--tiny` preset, then the flags given: a flag left unset never replaces the preset's value."""
    overrides = dict(TINY) if args.tiny else {}
    flags = {"data_root": args.data, "mode": args.mode, "zoo.image_size": args.image_size,
             "zoo.per_source": args.per_source, "seeds": args.seeds}
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return overrides


def run(args: argparse.Namespace) -> int:
    from attribnet.config import DemoConfig
    from shared_backbone.config import load_config

    if args.offline and (args.serve or args.port):
        raise ValueError("--serve/--port keep the network up; the --offline demo has no network")
    config = load_config(DemoConfig, args.config, config_overrides(args))
    began = time.monotonic()

    def step(label: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {label}", flush=True)

    out = Path(args.out)
    if args.offline:
        from attribnet.demo.offline import run_demo

        run_demo(config, out, step=step)
        report = out / "report"
    else:
        from attribnet.demo.network import run_network_demo

        run_network_demo(config, out, serve=args.serve, port=args.port, step=step)
        report = out / "network-report"
    if args.json:
        print(report.with_suffix(".json").read_text())
    else:
        print()
        print(report.with_suffix(".md").read_text())
        print(f"report: {report.with_suffix('.md')} and {report.with_suffix('.json')}")
    return 0

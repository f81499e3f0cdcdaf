"""`attribnet bench accuracy`: strict heads vs the paper's shared setting vs centralized baselines, over seeds and settings."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from shared_backbone.model.preprocessing import MODES

log = logging.getLogger("attribnet.bench")


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "accuracy", help="the accuracy benchmark: detection, strict and shared heads, baselines, perturbations, open set, late joiners, "
             "fully private setting, leave-one-family-out, out-of-scope, robustness oracle",
    )
    parser.add_argument("--config", help="YAML with AccuracyConfig keys, or an `accuracy:` section (configs/bench.yaml)")
    parser.add_argument("--profile", choices=("full", "quick", "lofo-quick", "robust-quick", "res128"), default="full",
                        help="full (default): every protocol; quick: the founding setting's protocols at small size, 1 seed; "
                             "lofo-quick: founding, fully private, leave-one-family-out and out-of-scope at 32 px, 1 seed, ~5-8 min a seed; "
                             "robust-quick: clean-, robust-trained and oracle models for JPEG q75 and blur 1 at the quick size, 1 seed; "
                             "res128: the founding setting at 128 px, 3 seeds of one --mode in under 2 hours")
    parser.add_argument("--mode", choices=MODES,
                        help="the models' input (data.mode): pixel, residual (pixels minus their 3x3 mean) or dct (log spectrum)")
    parser.add_argument("--dataset", choices=("zoo", "zoo_independent", "upscalers", "folder"),
                        help="zoo, zoo_independent (a separately written zoo, evaluation only) or upscalers (written here; "
                             "upscalers needs `make upscalers`) or folder (--data)")
    parser.add_argument("--data", help="folder-per-source dataset for --dataset folder (data.root)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    parser.add_argument("--out", help="results folder: OUT/accuracy.json (default bench/results)")
    parser.add_argument("--workdir", help="where datasets, bundles, heads and baseline runs go (default OUT/work)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="any accuracy key (dotted, YAML value), over the config and the profile; repeatable, e.g. "
                             "--set out_of_scope_per_kind=48 --set pretext.generators=16")
    parser.add_argument("--benchmarks-md", help="also write the table into this BENCHMARKS.md")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=run)


def load(args: argparse.Namespace):
    from attribnet.bench.accuracy.config import PROFILES, AccuracyConfig
    from shared_backbone.config import load_config

    given = {"dataset": args.dataset, "data.root": args.data, "seeds": args.seeds, "out": args.out, "workdir": args.workdir,
             "data.mode": args.mode}
    # A flag left out must not erase the profile's value (`--profile quick` is one seed unless --seeds says otherwise).
    overrides = {**PROFILES[args.profile], **{key: value for key, value in given.items() if value is not None},
                 **parse_settings(args.settings)}
    return load_config(AccuracyConfig, args.config, overrides, section="accuracy")


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """{dotted key: value} of `--set KEY=VALUE` flags, each value read as YAML (`16`, `true`, `[a, b]`)."""
    import yaml

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, e.g. out_of_scope_per_kind=48")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from attribnet.bench.accuracy.report import TOP_KEYS
    from attribnet.bench.accuracy.run import run_accuracy, update_benchmarks_md
    from shared_backbone.runtime.device import configure_tensorflow

    config = load(args)
    configure_tensorflow()
    command = "attribnet " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("attribnet") else "attribnet bench accuracy"
    report = run_accuracy(config, profile=args.profile, command=command, step=lambda label: log.info("%s", label))
    if args.benchmarks_md:
        update_benchmarks_md(Path(args.benchmarks_md), report)
    summary = {k: report[k] for k in TOP_KEYS if k in report}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        clean = report["clean"]
        print(f"accuracy on the clean test set ({len(config.seeds)} seed(s)): "
              + ", ".join(f"{k} {v:.3f}" for k, v in clean.items()))
        o = report["open_set"]
        print(f"open set: AUROC {o['auroc']:.3f}, unknown rate {o['unknown_rate']:.3f}, coverage {o['coverage']:.3f} (alpha {o['alpha']}), "
              f"known accuracy {o['known_accuracy_closed']:.3f} closed-set vs {o['known_accuracy_open']:.3f} full rule, "
              f"wrong source named {o['wrong_source_closed']:.3f} vs {o['wrong_source_open']:.3f}")
        if "late_join" in report:
            print(f"late joiners {report['late_join']['joined_accuracy']:.3f} vs founding {report['late_join']['founding_accuracy']:.3f}")
        if "private" in report:
            print(f"fully private: strict heads {report['private']['heads_calibrated']:.3f}")
        for family, row in report.get("leave_one_family_out", {}).items():
            print(f"{family} left out: strict heads {row['heads_calibrated']:.3f} vs gdaconv {row.get('gdaconv', float('nan')):.3f}")
        for kind, row in report.get("out_of_scope", {}).items():
            print(f"out of scope {kind}: pinned {row['pinned_rate']:.3f}")
        print(f"report: {Path(config.out) / 'accuracy.json'}")
    return 0

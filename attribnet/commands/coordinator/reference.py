"""`attribnet coordinator reference`: write the reference set every node may train and calibrate on."""

from __future__ import annotations

import argparse
import json


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "reference", help="write the reference set (real images + the fakes you may publish) that bundles announce",
    )
    parser.add_argument("--config", help="coordinator YAML (data, reference)")
    parser.add_argument("--data", help="dataset folder (data.root)")
    parser.add_argument("--out", help="new reference folder (default: `reference` of --config)")
    parser.add_argument(
        "--publish", action="append", default=[], metavar="SOURCE=CONSENT",
        help="also publish this fake source's images, saying on whose consent (repeatable), "
             "e.g. tconv_r=\"coordinator's own generator\"",
    )
    parser.add_argument("--include-test", action="store_true", help="include the test split (default: left out)")
    parser.add_argument("--max-per-source", type=int, default=0, help="at most this many images per source (0 = all)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    parser.set_defaults(handler=run)


def _parse_publish(items: list[str]) -> dict[str, str]:
    fakes = {}
    for item in items:
        source, sep, consent = item.partition("=")
        if not sep or not source or not consent:
            raise ValueError(f"--publish {item!r}: expected SOURCE=CONSENT (who agreed to publish these images)")
        fakes[source] = consent
    return fakes


def run(args: argparse.Namespace) -> int:
    from coordinator.config import CoordinatorConfig
    from coordinator.reference import write_reference_set
    from shared_backbone.config import load_config

    config = load_config(CoordinatorConfig, args.config, {"data.root": args.data, "reference": args.out})
    if not config.data.root or not config.reference:
        raise ValueError("give the dataset (--data or data.root) and the output folder (--out or reference)")
    description = write_reference_set(config.data, config.reference, fakes=_parse_publish(args.publish),
                                      include_test=args.include_test, max_per_source=args.max_per_source)
    if args.json:
        print(json.dumps(description, indent=2, sort_keys=True))
    else:
        print(f"reference set {config.reference}: digest {description['digest']}")
        for source, info in description["sources"].items():
            print(f"  {source}: {info['images']} {info['kind']} images ({info['consent']})")
        print("sign it into the next bundle: attribnet coordinator publish RUN --reference " + config.reference)
    return 0

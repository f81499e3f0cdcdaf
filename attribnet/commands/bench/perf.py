"""`attribnet bench perf`: per-query latency and throughput of the network vs N full models."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("perf", help="latency/throughput: gateway + N nodes vs N full models, side by side")
    parser.add_argument("--out", default="runs/bench-perf", help="folder for perf.json and BENCHMARKS.md")
    parser.add_argument("--bundle", help="signed bundle to serve (default: untrained synthetic models)")
    parser.add_argument("--public-key", help="public key verifying --bundle")
    parser.add_argument("--heads", nargs="+", metavar="HEAD_DIR", help="head folders, one node each (with --bundle)")
    parser.add_argument("--nodes", type=int, default=3, help="synthetic nodes when no --bundle (default 3)")
    parser.add_argument("--image-size", type=int, default=64, help="synthetic model size (default 64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="images per query (default 1 16)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant and batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients for the throughput run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from attribnet.bench.perf import PerfSettings, run_perf
    from shared_backbone.runtime.device import configure_tensorflow

    if bool(args.bundle) != bool(args.heads) or (args.bundle and not args.public_key):
        raise ValueError("--bundle, --public-key and --heads go together (or give none for synthetic models)")
    head_dirs = None
    if args.heads:
        from shared_backbone.model.heads import read_head_meta

        head_dirs = {read_head_meta(path)["source"]: Path(path) for path in args.heads}
    configure_tensorflow()
    settings = PerfSettings(
        image_size=args.image_size, nodes=args.nodes, batch_sizes=args.batch_sizes, repeats=args.repeats,
        warmup=args.warmup, concurrency=args.concurrency,
    )
    report = run_perf(args.out, settings, bundle_path=args.bundle, public_key=args.public_key, head_dirs=head_dirs)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print((Path(args.out) / "BENCHMARKS.md").read_text())
        print(f"wrote {Path(args.out) / 'perf.json'} and {Path(args.out) / 'BENCHMARKS.md'}")
    return 0

"""`attribnet bench serving`: network throughput and tail latency at the limit, and the transfer claim."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("attribnet.bench")


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "serving", help="in-process limit vs gateway + N nodes under closed-loop load; head vs full-model training"
    )
    parser.add_argument("--config", help="YAML with ServingBenchConfig keys (e.g. configs/bench.yaml)")
    parser.add_argument("--profile", choices=("full", "quick"), default="full",
                        help="full: every point of the config; quick: C=8 only, one short window, small transfer run")
    parser.add_argument("--out", default="bench/results", help="folder for serving.json, serving.md and work files")
    parser.add_argument("--benchmarks-md", metavar="FILE",
                        help="also replace the serving section of this Markdown file (e.g. BENCHMARKS.md)")
    parser.add_argument("--nodes", type=int, nargs="+", help="node counts N")
    parser.add_argument("--clients", type=int, nargs="+", help="concurrent clients C")
    parser.add_argument("--batches", type=int, nargs="+", help="images per request B")
    parser.add_argument("--repeats", type=int, help="measured windows per point")
    parser.add_argument("--seconds", type=float, help="length of one measured window")
    parser.add_argument("--batch-window-ms", type=float, help="the gateway's micro-batch window")
    parser.add_argument("--max-inflight-batches", type=int, help="the gateway's batches at the nodes at once")
    parser.add_argument("--skip-transfer", action="store_true", default=None, help="no head-vs-full-model training")
    parser.add_argument("--slow-node", type=float, metavar="SECONDS",
                        help="instead: honest single-image latency without and with one node answering SECONDS late, "
                             "side by side (N = the first --nodes, default 3; OUT/slow-node.json)")
    parser.add_argument("--queries", type=int, default=500, help="--slow-node: sequential queries per phase (default 500)")
    parser.add_argument("--node-budget-floor", type=float, metavar="SECONDS",
                        help="--slow-node: the gateway's node_budget_floor (e.g. 10: no latency budget, as before it)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (progress stays on stderr)")
    parser.set_defaults(handler=run)


def run_slow_node(args: argparse.Namespace, config) -> int:
    from attribnet.bench.slow_node import run_slow_node as measure

    gateway = {} if args.node_budget_floor is None else {"node_budget_floor": args.node_budget_floor}
    report = measure(args.out, config, args.slow_node, honest=(args.nodes or [3])[0], queries=args.queries,
                     gateway=gateway, progress=lambda message: log.info("%s", message))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'':28s}{'without':>10s}{'with':>10s}{'ratio':>8s}")
    for key in ("p50_ms", "p99_ms"):
        print(f"{key:28s}{report[key]['without']:10.1f}{report[key]['with']:10.1f}{report[key.replace('_ms', '_ratio')]:8.2f}")
    print(f"{'max_ms':28s}{report['max_ms']['without']:10.1f}{report['max_ms']['with']:10.1f}")
    print(f"slow node in the answers: {report['slow_node']}; errors {report['errors']}; rounds {report['rounds']}")
    print(f"queries slower than any without it: {report['queries_slower_than_any_without']}")
    print(f"wrote {Path(args.out) / 'slow-node.json'} in {report['wall_seconds']:.0f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    from attribnet.bench.serving import PROFILES, run_serving
    from attribnet.bench.serving_report import replace_section
    from attribnet.config import ServingBenchConfig
    from shared_backbone.config import load_config
    from shared_backbone.runtime.device import configure_tensorflow

    flags = {"nodes": args.nodes, "clients": args.clients, "batches": args.batches, "repeats": args.repeats,
             "seconds": args.seconds, "skip_transfer": args.skip_transfer, "batch_window_ms": args.batch_window_ms,
             "max_inflight_batches": args.max_inflight_batches}
    overrides = {**PROFILES[args.profile], **{key: value for key, value in flags.items() if value is not None}}
    config = load_config(ServingBenchConfig, args.config, overrides, section="serving")
    configure_tensorflow()
    if args.slow_node is not None:
        return run_slow_node(args, config)
    report = run_serving(args.out, config, progress=lambda message: log.info("%s", message))
    markdown = (Path(args.out) / "serving.md").read_text()
    if args.benchmarks_md:
        target = Path(args.benchmarks_md)
        target.write_text(replace_section(target.read_text() if target.is_file() else "", markdown))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(markdown)
        print(f"wrote {Path(args.out) / 'serving.json'} in {report['wall_seconds'] / 60:.1f} min")
    return 0

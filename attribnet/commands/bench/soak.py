"""`attribnet bench soak`: clients against a local network while nodes are killed and the coordinator restarts."""

from __future__ import annotations

import argparse


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("soak", help="closed-loop clients vs a loopback network under process kills (soak.json)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the clients send (default 120)")
    parser.add_argument("--out", required=True, help="folder for soak.json, the models and the process logs")
    parser.add_argument("--clients", type=int, default=2, help="closed-loop client threads (default 2)")
    parser.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    parser.add_argument("--kill-every", type=float, default=15.0, help="seconds between node kills (default 15)")
    parser.add_argument("--network", default="", metavar="DEMO_OUT",
                        help="serve the trained network an `attribnet demo --out DEMO_OUT` run wrote, canary audits on "
                             "(default: untrained synthetic models, audits off); --nodes is then the demo's")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from attribnet.bench.soak import SoakSettings, run_soak

    if not 0 < args.seconds <= 3600 or args.clients < 1 or args.nodes < 1 or args.kill_every <= 0:
        raise ValueError("--seconds must be in (0, 3600], --clients/--nodes >= 1, --kill-every > 0")
    report = run_soak(args.out, SoakSettings(seconds=args.seconds, clients=args.clients, nodes=args.nodes,
                                             kill_every=args.kill_every, network=args.network))
    print(json.dumps({k: v for k, v in report.items() if k != "settings"}, indent=2, sort_keys=True))
    # Synthetic heads are random, not honest: a flag says nothing about them. A trained network's must stay clean.
    honest = not report["audited"] or (not report["quarantined"] and not report["flagged"])
    return 0 if report["lost"] == 0 and report["registry_unchanged"] and honest else 1

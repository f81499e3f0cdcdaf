"""`attribnet bench …`: baselines and performance benchmarks.

The actions live in one module per area (bench_baseline, bench_perf), each with `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib

AREAS = ("bench_baseline", "bench_perf")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="baselines and performance benchmarks")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for area in AREAS:
        importlib.import_module(f"attribnet.commands.{area}").register(actions)

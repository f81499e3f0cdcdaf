"""`attribnet bench …`: baselines and benchmarks; each writes JSON and a Markdown table."""

from __future__ import annotations

import argparse

from attribnet.commands import register_group


def register(subparsers: argparse._SubParsersAction) -> None:
    register_group(subparsers, "bench", "baselines and benchmarks", __name__, ("baseline", "perf", "serving", "soak", "accuracy"))

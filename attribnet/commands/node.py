"""`attribnet node …`: one organisation's node: train, evaluate and serve its head.

The actions live in one module per area (node_train, node_import, node_serve), each with `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib

AREAS = ("node_train", "node_import", "node_serve")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("node", help="one organisation's node: train, evaluate and serve its head")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for area in AREAS:
        importlib.import_module(f"attribnet.commands.{area}").register(actions)

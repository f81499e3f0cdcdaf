"""`attribnet coordinator …`: the network's admin: keys, primary module, bundles, registry, gateway.

The actions live in one module per area (coordinator_train, coordinator_import, coordinator_serve), each with `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib

AREAS = ("coordinator_train", "coordinator_import", "coordinator_serve")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("coordinator", help="the network's admin: keys, primary module, bundles, registry, gateway")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for area in AREAS:
        importlib.import_module(f"attribnet.commands.{area}").register(actions)

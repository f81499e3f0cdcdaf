"""`attribnet coordinator …`: the network's admin: keys, primary module, bundles, registry, gateway."""

from __future__ import annotations

import argparse

from attribnet.commands import register_group


def register(subparsers: argparse._SubParsersAction) -> None:
    register_group(subparsers, "coordinator", "the network's admin: keys, primary module, bundles, registry, gateway",
                   __name__, ("train", "reference", "bundles", "serve"))

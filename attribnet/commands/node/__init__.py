"""`attribnet node …`: one organisation's node: join a network, train, evaluate and serve its head."""

from __future__ import annotations

import argparse

from attribnet.commands import register_group


def register(subparsers: argparse._SubParsersAction) -> None:
    register_group(subparsers, "node", "one organisation's node: join a network, train, evaluate and serve its head",
                   __name__, ("train", "paper_head", "serve", "join"))

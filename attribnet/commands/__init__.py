"""One module per top-level sub-command (`data`, `predict`, …), one package per role with one
module per action group (`coordinator/`, `node/`, `bench/`); each exposes `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib


def register_group(subparsers: argparse._SubParsersAction, name: str, help_text: str, package: str,
                   modules: tuple[str, ...]) -> None:
    """`attribnet NAME ACTION`: a sub-command whose actions are registered by `package.MODULE.register`."""
    parser = subparsers.add_parser(name, help=help_text)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for module in modules:
        importlib.import_module(f"{package}.{module}").register(actions)

"""One module per top-level sub-command (`data`, `predict`, …), one package per role with one
module per action group (`coordinator/`, `node/`, `bench/`); each exposes `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib


def register_group(subparsers: argparse._SubParsersAction, name: str, help_text: str, package: str,
                   modules: tuple[str, ...]) -> None:
    """`attribnet NAME ACTION`: a sub-command whose actions are registered by `package.MODULE.register`."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for module in modules:
        before = set(actions.choices)
        loaded = importlib.import_module(f"{package}.{module}")
        loaded.register(actions)
        for action in set(actions.choices) - before:
            describe(actions, action, loaded.__doc__)


def describe(actions: argparse._SubParsersAction, action: str, docstring: str | None) -> None:
    """A leaf `--help` says what the command does: its one-line help, then its module's docstring."""
    parser = actions.choices[action]
    if parser.description:
        return
    summary = next((a.help for a in actions._choices_actions if a.dest == action), "") or ""
    parser.description = "\n\n".join(part for part in (summary, (docstring or "").strip()) if part)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def describe_tree(actions: argparse._SubParsersAction, name: str, docstring: str | None) -> None:
    """Every parser under `name` without a description gets its one-line help (and, for `name`, its module's docstring)."""
    describe(actions, name, docstring)
    for sub in actions.choices[name]._actions:
        if isinstance(sub, argparse._SubParsersAction):
            for child in sub.choices:
                describe_tree(sub, child, None)

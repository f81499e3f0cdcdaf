"""`attribnet`: one console script whose sub-commands mirror the roles.

    attribnet data …          datasets, the fingerprint zoo, normstats, perturbed test sets
    attribnet coordinator …   train / evaluate / publish the backbone, keys, registry, gateway
    attribnet node …          train / evaluate / serve one head
    attribnet predict …       offline attribution with a bundle and local heads
    attribnet query …         ask a running gateway
    attribnet bench …         baselines and performance benchmarks
    attribnet federation …    the Flower run that trains every node's head
    attribnet demo            the whole story on one machine
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from attribnet.commands import describe_tree

COMMAND_MODULES = ("data", "coordinator", "node", "predict", "query", "bench", "federation", "demo")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attribnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"attribnet.commands.{name}")
        before = set(subparsers.choices)
        module.register(subparsers)
        for command in set(subparsers.choices) - before:
            describe_tree(subparsers, command, module.__doc__)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        logging.getLogger("attribnet").warning("interrupted")
        return 130
    except BrokenPipeError:  # `attribnet query ... | head`: the reader left; stop quietly like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - the CLI's single place that turns errors into one line
        if args.verbose > 1 or isinstance(exc, (AssertionError, NameError, AttributeError, TypeError)):
            raise
        print(f"attribnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

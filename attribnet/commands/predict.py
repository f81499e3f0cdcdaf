"""`attribnet predict` (being built)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="(being built)")
    parser.set_defaults(handler=lambda args: parser.error("not built yet"))

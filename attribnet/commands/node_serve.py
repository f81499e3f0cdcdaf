"""Actions of `attribnet node` for this area (being built)."""

import argparse


def register(actions: argparse._SubParsersAction) -> None:
    """Adds this area's actions; none yet."""

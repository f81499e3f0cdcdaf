"""The `attribnet` command line, the demos and the benchmarks: the only code that wires both roles.

`cli.py` dispatches to `commands/` (one module per sub-command); `demo/`, `bench/` and `launch/`
hold what those commands run.
"""

__version__ = "0.1.0"

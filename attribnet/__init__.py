"""The `attribnet` command line: thin wiring over `coordinator`, `node` and `shared_backbone`."""

__version__ = "0.1.0"

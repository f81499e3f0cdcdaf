"""One module per top-level sub-command; each exposes `register(subparsers)`."""

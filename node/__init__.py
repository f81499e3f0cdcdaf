"""One organisation's node: trains, calibrates and serves the head for its own generator."""

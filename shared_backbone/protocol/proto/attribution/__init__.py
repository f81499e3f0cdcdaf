"""Versioned protobuf packages (`attribution.v1`)."""

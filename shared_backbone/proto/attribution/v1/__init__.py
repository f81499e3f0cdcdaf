"""Generated code for `attribution.v1`; regenerate with `python -m shared_backbone.proto.generate`."""

"""Generated code for `attribution.v1`; regenerate with `make proto (python -m shared_backbone.protocol.proto.generate)`."""

"""What the roles say to each other: the `attribution.v1` gRPC protocol (`.proto`, generated code,
wire formats, node identity proofs) and the Flower message schema.

Definitions only, free of Keras: servers, batching and clients live in `shared_backbone/runtime/`.
"""

"""What the roles say to each other: the `attribution.v1` gRPC protocol (`.proto`, generated code,
wire formats, server/channel helpers, the gateway client) and the Flower message schema.

Imported by the coordinator, the nodes and clients; it builds on `model/` only.
"""

"""The coordinator's gRPC server, in parts: the trunk micro-batcher, the pool of node channels,
the two servicers (`AttributionService` for clients, `RegistryService` for nodes) and the server
bootstrap that wires them. `server.start_coordinator` / `server.serve_forever` are the entry points.
"""

"""The coordinator's gRPC server, in parts: intake, the serving pipeline (trunk micro-batches), the
pool of node channels, the two servicers (`AttributionServicer` for clients, `RegistryServicer` for
nodes) and the server bootstrap that builds the parts and hands them to the servicers.
`server.start_coordinator` / `server.serve_forever` are the entry points.
"""

"""gRPC and TensorFlow runtime both roles run: servers and channels (TLS, interceptors, signals),
the micro-batcher and rate limits, Prometheus metrics, the gateway client and device setup.

Apart from `protocol/`, which only defines what goes over the wire.
"""

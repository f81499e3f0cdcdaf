"""The contract the coordinator and every node share, in five rooms that import one way.

`model/` (what a node must trust: networks, preprocessing, heads, calibration, the rule, bundles,
signing, the paper-weights reader) <- `data/` (datasets, perturbations, the reference set, self-made
negatives) and `protocol/` (wire definitions for gRPC and Flower, free of Keras) <- `runtime/` (gRPC
servers and clients, batching, Prometheus, device setup) <- `training/` (the fit loop, trunk
features, evaluation, metrics and reports). `config.py` is the strict YAML loader and the schema
blocks every role is built from.
"""

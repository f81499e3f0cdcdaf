"""The contract the coordinator and every node share, in four rooms that import one way.

`model/` (what a node must trust: networks, preprocessing, heads, calibration, the rule, bundles,
signing) <- `data/` and `experiments/`; `model/` <- `protocol/` (what goes over gRPC and Flower).
`config.py` is the strict YAML loader and the schema blocks every role is built from.
"""

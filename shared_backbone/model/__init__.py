"""The model contract: the paper's networks (the one place that knows layer names), preprocessing,
heads, calibration, the attribution rule, the offline attributor, bundles and their signatures.

Both roles run this code on every image; it imports no other sub-package of `shared_backbone`.
"""

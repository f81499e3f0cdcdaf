"""The lab: benchmark datasets and research baselines, never imported by a node, the coordinator or
`shared_backbone` (`tests/test_layering.py` checks it).

`datasets/` makes the data the benchmarks judge on (the fingerprint zoo, the GAN-trained upscalers,
the real-photo corpus, perturbed copies); `baselines/` holds the centralized comparisons (gdaconv,
postpool, DCT regression) that see every source, unlike a node.
"""

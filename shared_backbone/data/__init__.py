"""Datasets (folder per source), splits, the streaming input pipeline, statistics, perturbations,
the coordinator's reference set and the negatives a node makes itself.

Used by trainers on both roles and by the benchmarks; it builds on `model/` (preprocessing) only.
Benchmark datasets (the zoo, the upscalers) live in the lab, `attribnet/lab/datasets/`.
"""

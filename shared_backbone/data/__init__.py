"""Datasets (folder per source), splits, the streaming input pipeline, statistics, perturbations,
the coordinator's reference set and the fingerprint zoo.

Used by trainers on both roles and by the benchmarks; it builds on `model/` (preprocessing) only.
"""

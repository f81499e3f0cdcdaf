"""Research tooling: the one training loop, metrics, reports and plots, evaluation of bundle +
heads, the centralized baselines, DCT regression and the paper-weights reader.

The trainers of both roles and the benchmarks use it; a server that only answers queries does not.
"""

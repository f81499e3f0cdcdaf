"""Benchmark datasets the project makes itself: the fingerprint zoo, the real-generator upscalers
and their photographs, perturbed copies of a dataset."""

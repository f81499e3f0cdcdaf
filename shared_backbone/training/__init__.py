"""Production training: the one fit loop, trunk features cached for heads, classification metrics,
evaluation of bundle + heads and the reports they write.

Used by the coordinator (primary module, evaluation gate), the nodes (heads) and the benchmarks;
it builds on `model/`, `data/` and the runtime's device setup.
"""

"""Starting real processes on one machine: Flower SuperLink/SuperNodes and runs, and a local
network of gateway + node services. Used by the demos, the benchmarks and the tests.
"""

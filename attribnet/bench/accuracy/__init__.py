"""The accuracy benchmark (`attribnet bench accuracy`): configuration and roles, the data (`bench_data.py`),
training per seed with the network's own code, evaluation, and the report."""

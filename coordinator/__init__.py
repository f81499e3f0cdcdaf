"""The network's coordinator: primary-module training, signed backbone publishing, the registry,
the query gateway and the Flower ServerApp. Run by the network's admin; never imports `node`.
"""

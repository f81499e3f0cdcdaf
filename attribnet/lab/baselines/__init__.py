"""Centralized baselines that see every source (gdaconv, postpool, DCT regression): what the
network's strict heads are compared with."""

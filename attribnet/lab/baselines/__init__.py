"""What the network's strict heads are compared with: centralized baselines that see every source
(gdaconv, postpool, DCT regression) and a decentralised one with no backbone (spectral templates)."""

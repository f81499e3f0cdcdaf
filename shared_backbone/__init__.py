"""Everything the coordinator and the nodes share: models, preprocessing, data, bundles, protocol."""

"""A node's fine-tuning objectives: `attribution` moves the trunk and nothing else (the coordinator refits the
detector's tail over the averaged trunk); an unknown objective is refused."""

from __future__ import annotations

import numpy as np
import pytest

from node.config import NegativesConfig, NodeConfig
from shared_backbone.config import TrainConfig
from shared_backbone.model import networks


def test_attribution_moves_the_trunk_only_and_an_unknown_objective_is_refused(zoo_bundle, zoo_reference, tiny_zoo_config, tmp_path):
    from node.finetune import finetune

    config = NodeConfig(source="tconv_a", data=tiny_zoo_config, reference=str(zoo_reference), state_dir=str(tmp_path),
                        negatives=NegativesConfig(count=60), train=TrainConfig(epochs=2, batch_size=32, min_epochs=1))
    start = zoo_bundle.load_primary()
    weights, count = finetune(config, zoo_bundle, start.get_weights(), ["real"], "attribution")
    moved = zoo_bundle.load_primary()
    moved.set_weights(weights)
    assert count > 0
    in_trunk = {w.path for w in networks.build_trunk(start).weights}
    pairs = [(w.path, np.asarray(w), np.asarray(v)) for w, v in zip(start.weights, moved.weights)]
    assert all(np.array_equal(a, b) for path, a, b in pairs if path not in in_trunk)  # the detector's tail untouched
    assert any(not np.allclose(a, b) for path, a, b in pairs if path in in_trunk)
    with pytest.raises(ValueError, match="objective must be one of detection, attribution"):
        finetune(config, zoo_bundle, weights, ["real"], "everything")

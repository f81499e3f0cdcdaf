"""The paper's published weights as test data: where they are, the skip when absent, a raw reader.

They live in ../shared beside the checkout (present in CI) and are never copied into the repo.
The reader uses h5py directly, independently of the importer under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

# ATTRIBNET_PAPER_WEIGHTS points elsewhere (e.g. a worktree whose ../shared is not the checkout's).
PAPER = Path(os.environ.get("ATTRIBNET_PAPER_WEIGHTS") or Path(__file__).resolve().parents[2] / "shared/reference/paper_weights")
NORMSTATS = PAPER / "ganfp_dctnorm"

requires_paper_weights = pytest.mark.skipif(
    not PAPER.is_dir(), reason=f"the paper's weights are not at {PAPER} (they live in ../shared, outside the repo)"
)


def hdf5_arrays(path: Path, dtype=None) -> dict[tuple[str, str], np.ndarray]:
    """Every stored array keyed by (layer, variable), straight from the file's `model_weights` groups."""
    arrays = {}
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"]
        for layer in group:
            if layer not in group[layer]:
                continue
            for variable, dataset in group[layer][layer].items():
                arrays[(layer, variable.split(":")[0])] = np.asarray(dataset, dtype=dtype)
    return arrays

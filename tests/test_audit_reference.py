"""The gateway checks a node's conformal reference against its scores on its own deposited canaries.

Simulated nodes (no network: `test_trust.py` runs the attack against a real gateway): own scores
are views of a deposited sample from the same distribution as the reference (honest), or the
reference is shifted below them (dishonest). The check runs where the audit runs it (the
checkpoints of `Evidence.add_own`) at the default significance.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.config import AuditConfig
from coordinator.gateway.audit import Evidence, reference_verdict


def first_verdict(seed: int, reference_size: int, deposited: int, shift: float = 0.0, *, saturated: bool = False,
                  steps: int = 400) -> tuple[int, str] | None:
    """(own canaries seen, reason) when the reference is first caught, else None."""
    config = AuditConfig()
    rng = np.random.default_rng(seed)
    draw = (lambda size: np.full(size, 0.9999)) if saturated else (lambda size: rng.beta(5, 2, size))
    reference = tuple(np.clip(np.sort(draw(reference_size)) - shift, 0.0, 1.0))
    images = draw(deposited)
    evidence = Evidence(generation=1, window=config.window)
    for seen in range(1, steps + 1):
        view = np.clip(images[rng.integers(deposited, size=1)] + rng.normal(0, 0.002, size=1), 0.0, 0.9999)
        if evidence.add_own(view, config.min_per_kind):
            evidence.reference_checks += 1
            significance = config.reference_significance / evidence.reference_checks ** 2
            if reason := reference_verdict(evidence.own, reference, significance, deposited):
                return seen, reason
    return None


@pytest.mark.parametrize("reference_size,deposited", [(10, 12), (60, 64), (500, 64), (500, 200)])
def test_honest_references_are_never_caught(reference_size, deposited):
    caught = [v for seed in range(100) if (v := first_verdict(seed, reference_size, deposited))]
    assert caught == []


def test_a_saturated_honest_head_is_never_caught():
    """Every own score and every reference value at the cap: ties count as at or below."""
    assert all(first_verdict(seed, 200, 64, saturated=True) is None for seed in range(10))


@pytest.mark.parametrize("shift,within,at_least", [
    (0.6, 20, 20),  # far below (near the floor): every seed at the second check
    (0.15, 400, 14),  # a quarter of the scores' spread: most within 200 own canaries (measured 16 of 20)
])
def test_a_reference_below_the_own_canaries_is_caught(shift, within, at_least):
    verdicts = [first_verdict(seed, 500, 200, shift) for seed in range(20)]
    caught = [v for v in verdicts if v and v[0] <= within]
    assert len(caught) >= at_least, verdicts
    assert "its conformal reference sits below its own canaries" in caught[0][1]


def test_too_small_a_deposit_cannot_catch_anything():
    """12 deposited images weigh as at most 12 independent ones: the check says nothing, rather than guess."""
    assert all(first_verdict(seed, 500, 12, shift=0.6) is None for seed in range(10))

"""The attribution rule, applied identically by offline prediction and by the gateway.

The paper's rule plus open-set rejection: the primary module's real/fake score takes priority, so
`fake_score < fake_threshold` gives `real`; otherwise the source whose calibrated head score is
highest wins, unless no calibrated score clears its head's threshold, which gives `unknown`.
"""

from __future__ import annotations

REAL = "real"
UNKNOWN = "unknown"
DEFAULT_FAKE_THRESHOLD = 0.5


def decide(
    fake_score: float,
    calibrated: dict[str, float],
    thresholds: dict[str, float],
    fake_threshold: float = DEFAULT_FAKE_THRESHOLD,
) -> str:
    """`real`, the winning source, or `unknown` (no head confident, or no head answered)."""
    if fake_score < fake_threshold:
        return REAL
    if not calibrated:
        return UNKNOWN
    source = max(sorted(calibrated), key=lambda name: calibrated[name])
    return source if calibrated[source] >= thresholds.get(source, 0.5) else UNKNOWN

"""Score calibration for one-vs-rest heads (Platt and temperature scaling on the logit).

Heads are trained independently, so their raw sigmoid outputs are not on one scale; the argmax
over heads is only meaningful after each head's score is mapped to a probability on held-out data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.optimize
import scipy.special

METHODS = ("platt", "temperature", "identity")
_EPS = 1e-7


@dataclass(frozen=True)
class Calibration:
    """calibrated = sigmoid(a * logit(raw) + b); temperature scaling fixes b = 0, identity a=1, b=0."""

    method: str = "identity"
    a: float = 1.0
    b: float = 0.0

    def apply(self, raw: np.ndarray | float) -> np.ndarray:
        raw = np.clip(np.asarray(raw, dtype=np.float64), _EPS, 1 - _EPS)
        return scipy.special.expit(self.a * scipy.special.logit(raw) + self.b)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        if data.get("method") not in METHODS:
            raise ValueError(f"unknown calibration method {data.get('method')!r}; expected one of {METHODS}")
        return cls(method=data["method"], a=float(data["a"]), b=float(data["b"]))


def _negative_log_likelihood(params: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> float:
    z = params[0] * logits + (params[1] if len(params) > 1 else 0.0)
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_calibration(raw_scores: np.ndarray, labels: np.ndarray, method: str = "platt") -> Calibration:
    """Fits the calibration by minimising the log-loss on held-out (raw score, 0/1 label) pairs."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if method == "identity":
        return Calibration()
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError("calibration needs held-out examples of both classes")
    logits = scipy.special.logit(np.clip(np.asarray(raw_scores, dtype=np.float64).ravel(), _EPS, 1 - _EPS))
    start = np.array([1.0, 0.0]) if method == "platt" else np.array([1.0])
    result = scipy.optimize.minimize(_negative_log_likelihood, start, args=(logits, labels), method="L-BFGS-B")
    params = result.x
    return Calibration(method=method, a=float(params[0]), b=float(params[1]) if method == "platt" else 0.0)

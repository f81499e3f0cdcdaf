"""Named, timed steps: what a demo tells its user while it works, and how long each step took."""

from __future__ import annotations

import time
from typing import Any, Callable


class StepTimer:
    """Announces each step through `announce` and records its wall time (seconds) under `key`."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self.announce = announce
        self.seconds: dict[str, float] = {}

    def run(self, key: str, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.announce(label)
        began = time.monotonic()
        value = fn(*args, **kwargs)
        self.seconds[key] = round(time.monotonic() - began, 1)
        return value

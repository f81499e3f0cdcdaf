"""Shared fixtures: data in fixtures_data.py, model/bundle in fixtures_backbone.py, the demo runs in fixtures_demo.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from tests.fixtures_backbone import *  # noqa: E402,F401,F403
from tests.fixtures_data import *  # noqa: E402,F401,F403
from tests.fixtures_demo import *  # noqa: E402,F401,F403

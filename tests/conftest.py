"""Shared fixtures: data in fixtures_data.py, model/bundle in fixtures_backbone.py, the demo runs in fixtures_demo.py.

`make test` runs two pytest-xdist workers with `--dist loadgroup`; `pytest_collection_modifyitems` below
puts every module in one group, so a module's fixtures are made once, and every module that uses one of
the expensive session fixtures in that fixture's group, so those are made once too.
"""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from tests.fixtures_backbone import *  # noqa: E402,F401,F403
from tests.fixtures_data import *  # noqa: E402,F401,F403
from tests.fixtures_demo import *  # noqa: E402,F401,F403


# Session fixtures that train models or start networks for tens of seconds: their users share one worker.
SHARED_GROUPS = {
    "zoo-models": {"zoo_primary_run", "zoo_bundle", "zoo_heads", "zoo_reference"},
    "demos": {"served_demo", "offline_demo"},
}
ASKS_BY_NAME = {"test_doc_commands.py": "demos"}  # request.getfixturevalue("served_demo") at run time


@pytest.hookimpl(wrapper=True)  # a wrapper's first half runs before every plain hook, xdist's (which reads the groups) too
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """An `xdist_group` per module, or the shared group of the expensive fixture any of its tests uses."""
    groups: dict[str, str] = dict(ASKS_BY_NAME)
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for group, fixtures in SHARED_GROUPS.items():
            if used & fixtures:
                groups.setdefault(item.path.name, group)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups.get(item.path.name, item.path.name)))
    return (yield)

"""The suite's own parallel layout (tests/conftest.py): what shares an expensive fixture shares a worker."""

from __future__ import annotations

import pytest

from tests.conftest import SHARED_GROUPS


def group_of(item: pytest.Item) -> str:
    (mark,) = item.iter_markers("xdist_group")
    return mark.args[0]


def test_every_user_of_a_shared_fixture_is_in_its_group_and_a_module_is_never_split(request):
    """Checked on the tests collected with it (the whole suite under `make test`)."""
    items = request.session.items
    for group, fixtures in SHARED_GROUPS.items():
        users = [item for item in items if fixtures & set(item.fixturenames)]
        assert {group_of(item) for item in users} <= {group}, group
    by_module: dict[str, set[str]] = {}
    for item in items:
        by_module.setdefault(item.path.name, set()).add(group_of(item))
    assert all(len(groups) == 1 for groups in by_module.values()), by_module
    assert by_module.get("test_doc_commands.py", {"demos"}) == {"demos"}
    assert by_module["test_suite_groups.py"] == {"test_suite_groups.py"}


def test_under_make_test_the_workers_receive_the_groups(request):
    """`make test` runs `-n 2 --dist loadgroup`: xdist then suffixes each test id with its group, unless
    a pytest it does not support drops them silently (pytest-dev/pytest-xdist#1386)."""
    if not getattr(request.config.option, "loadgroup", False):
        assert request.node.nodeid.endswith("::test_under_make_test_the_workers_receive_the_groups")
        return
    assert request.node.nodeid.endswith("@test_suite_groups.py"), request.node.nodeid

"""Shared fixtures, and the order test files run in."""
from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    """Files with the most `slow` tests first, each file's tests in their own order. `make test` runs files on two
    workers (pytest-xdist, --dist loadfile) in this order: a long file handed out last would run alone at the end."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """FINLORA_DATA_DIR holding the real data (its finlora/ folder). Tests marked ``real_data`` use it.

    Missing: FAIL when CI=true (real-data tests must run in CI), skip otherwise.
    """
    d = os.environ.get("FINLORA_DATA_DIR")
    if d and (Path(d).expanduser() / "finlora" / "test").is_dir():
        return Path(d).expanduser()
    why = ("FINLORA_DATA_DIR is not set" if not d
           else f"FINLORA_DATA_DIR={d} does not contain finlora/test/")
    msg = (f"real-data test: {why}. Point FINLORA_DATA_DIR at a copy of the data laid out like "
           "../shared/data (see data/README.md).")
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(msg + " CI=true: real-data tests must not be skipped.")
    pytest.skip(msg)

"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


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
           "/work/shared/data (see data/README.md).")
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(msg + " CI=true: real-data tests must not be skipped.")
    pytest.skip(msg)

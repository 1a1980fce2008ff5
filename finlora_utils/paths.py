"""Where the kit keeps caches, downloads and reports (no I/O at import)."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# A source checkout has pyproject.toml beside the package; an installed wheel does not.
_CHECKOUT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").exists() else None


def project_root() -> Path:
    """The checkout root, or the current directory for an installed package."""
    return _CHECKOUT or Path.cwd()


def cache_dir() -> Path:
    """Model conversion cache and downloads: FINLORA_CACHE_DIR, else data/cache/ in the checkout."""
    env = os.environ.get("FINLORA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if _CHECKOUT is not None:
        return _CHECKOUT / "data" / "cache"
    return Path.home() / ".cache" / "finlora_utils"


def reports_dir() -> Path:
    return Path(os.environ.get("FINLORA_REPORTS_DIR", project_root() / "reports"))

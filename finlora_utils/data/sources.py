"""Where data files come from: FINLORA_DATA_DIR -> local cache -> download (sha256-pinned) -> sample.

Files are named by their path relative to a data directory laid out like the shared copy
(``finlora/test/fpb_test.jsonl``, ``fpb/Sentences_50Agree.txt``, ...). ``data/manifest.json`` pins, for
each one, the public upstream URL (raw.githubusercontent.com at a fixed commit) and its sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .. import paths

ENV_DATA_DIR = "FINLORA_DATA_DIR"
ENV_DOWNLOAD_BASE = "FINLORA_DOWNLOAD_BASE"  # mirror laid out like the data dir; replaces the manifest URLs
ENV_OFFLINE = "FINLORA_OFFLINE"  # "1": never download
ENV_SAMPLE_DIR = "FINLORA_SAMPLE_DIR"
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


class DataError(RuntimeError):
    """Base class of the data layer's errors."""


class DataUnavailableError(DataError):
    """No source could provide a file a task needs."""


class DownloadError(DataError):
    """A download failed (network, HTTP status)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match the sha256 pinned in the manifest (nothing was kept)."""


def offline() -> bool:
    """True when FINLORA_OFFLINE is set to anything but "" or "0": the loader never touches the network."""
    return os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0")


def manifest_path() -> Path:
    return paths.PACKAGE_DIR.parent / "data" / "manifest.json"


_MANIFEST: dict | None = None


def manifest() -> dict:
    """``{relpath: {"url", "sha256", "bytes", "repo", "commit", "upstream_path", "license"}}``; {} if absent."""
    global _MANIFEST
    if _MANIFEST is None:
        p = manifest_path()
        _MANIFEST = json.loads(p.read_text(encoding="utf-8"))["files"] if p.exists() else {}
    return _MANIFEST


def data_dir_from_env(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data folder: `data_dir`, else FINLORA_DATA_DIR, else None. One that is named but is not a folder is
    refused: a mistyped path would otherwise fall back to the synthetic sample set with only a warning."""
    d = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR)
    if not d:
        return None
    path = Path(d).expanduser()
    if not path.is_dir():
        what = "data_dir" if data_dir is not None else ENV_DATA_DIR
        raise DataUnavailableError(f"{what}={str(d)!r}: {'not a folder' if path.exists() else 'no such folder'}; "
                                   f"expected the folder holding the data (finlora/, fpb/, ...: see data/README.md), "
                                   f"or unset {ENV_DATA_DIR} to use the download cache and the sample set")
    return path


def download_cache_dir() -> Path:
    """Downloaded data files: ``cache_dir()/datasets/<relpath>`` (data/cache/ is git-ignored)."""
    return paths.cache_dir() / "datasets"


def sample_dir() -> Path:
    """The generated sample set: FINLORA_SAMPLE_DIR, else ``data/sample/`` in a checkout, else the cache."""
    env = os.environ.get(ENV_SAMPLE_DIR)
    if env:
        return Path(env).expanduser()
    root = paths.PACKAGE_DIR.parent
    if (root / "pyproject.toml").exists():
        return root / "data" / "sample"
    return paths.cache_dir() / "sample"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


_VERIFIED: set[tuple[str, float, int]] = set()


def _cached_ok(path: Path, sha: str | None) -> bool:
    """A cached file counts only if it still matches its pinned sha256 (checked once per process)."""
    if sha is None:
        return True
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if key in _VERIFIED:
        return True
    if sha256_file(path) == sha:
        _VERIFIED.add(key)
        return True
    return False


def url_for(relpath: str, base: str | None = None) -> str:
    base = base if base is not None else os.environ.get(ENV_DOWNLOAD_BASE)
    if base:
        return base.rstrip("/") + "/" + relpath
    entry = manifest().get(relpath)
    if entry is None:
        raise DataUnavailableError(f"{relpath}: not in the download manifest {manifest_path()}")
    return entry["url"]


def download(relpath: str, dest: Path | None = None, base: str | None = None,
             timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download one manifest file into the cache, verify its sha256, and move it into place atomically.

    On a checksum mismatch the temporary file is deleted and ChecksumError names the file and both hashes.
    """
    entry = manifest().get(relpath)
    if entry is None:
        raise DataUnavailableError(f"{relpath}: not in the download manifest {manifest_path()}")
    url = url_for(relpath, base)
    dest = dest if dest is not None else download_cache_dir() / relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) URLs only
                    for chunk in iter(lambda: resp.read(_CHUNK), b""):
                        h.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as e:
                raise DownloadError(f"{relpath}: HTTP {e.code} from {url}") from e
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise DownloadError(f"{relpath}: cannot download {url}: {reason}") from e
        actual = h.hexdigest()
        if actual != entry["sha256"]:
            raise ChecksumError(f"{relpath}: sha256 mismatch for the file downloaded from {url}: "
                                f"expected {entry['sha256']}, got {actual}; the file was not kept")
        os.replace(tmp, dest)
        _VERIFIED.add((str(dest), dest.stat().st_mtime, dest.stat().st_size))
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


# Bases that failed with a network error in this process: not retried (avoids one timeout per file).
_UNREACHABLE: set[str] = set()


def resolve(relpath: str, data_dir: str | os.PathLike | None = None, allow_download: bool = True,
            base: str | None = None) -> tuple[Path | None, list[str]]:
    """Find ``relpath``: data dir (argument, else FINLORA_DATA_DIR), then the cache, then a download.

    Returns ``(path or None, notes)``: the notes say what was tried, for error messages. ChecksumError
    propagates (a reachable source serving the wrong bytes is an error, not a reason to fall back).
    """
    notes = []
    d = data_dir_from_env(data_dir)
    if d is not None:
        p = d / relpath
        if p.is_file():
            return p, notes
        notes.append(f"not in data dir {d}")
    else:
        notes.append(f"{ENV_DATA_DIR} not set")
    entry = manifest().get(relpath)
    cached = download_cache_dir() / relpath
    if cached.is_file():
        if _cached_ok(cached, entry and entry["sha256"]):
            return cached, notes
        notes.append(f"cached copy {cached} fails its sha256 check (ignored)")
    else:
        notes.append(f"not in cache {download_cache_dir()}")
    if not allow_download or offline():
        notes.append(f"downloads disabled ({ENV_OFFLINE}={os.environ.get(ENV_OFFLINE)})" if offline()
                     else "downloads disabled")
        return None, notes
    if entry is None:
        notes.append("no download URL in the manifest")
        return None, notes
    base = base if base is not None else os.environ.get(ENV_DOWNLOAD_BASE)
    key = base or "<manifest>"
    if key in _UNREACHABLE:
        notes.append(f"download source {key} unreachable earlier in this process")
        return None, notes
    try:
        return download(relpath, base=base), notes
    except ChecksumError:
        raise
    except DownloadError as e:
        if not isinstance(e.__cause__, urllib.error.HTTPError):
            _UNREACHABLE.add(key)
        notes.append(str(e))
        return None, notes

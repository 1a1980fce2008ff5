"""Long inputs: what one training step costs in time and memory as the sequence grows, without and with
gradient checkpointing, beside the memory planner's estimate.

    rows = seqlen.seq_len_sweep(TrainConfig(model="embedded", precision="nf4"), (256, 512, 1024, 2048))

Truncation itself (instruction and 'Answer: ' never cut) lives in finlora_utils.tokenization.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from . import memory, results
from .artifacts import as_stored
from .config import TrainConfig
from .engine import make_optimizer
from .tokenization import IGNORE
from .train import (TrainModule, amp_dtype, build_model, memory_budget, planned, set_grad_checkpointing,
                    train_step)


def _synthetic_batch(tok, seq_len: int, batch_size: int, seed: int) -> dict:
    """A prompt of seq_len - 2 random tokens and a 1-token target + eos: a long-input classification step."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, len(tok) - 1, (batch_size, seq_len), generator=g)
    ids[:, -1] = tok.eos_token_id
    labels = torch.full_like(ids, IGNORE)
    labels[:, -2:] = ids[:, -2:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _sweep_here(config: TrainConfig, seq_lens: list[int], batch_size: int) -> list[dict]:
    model, tok = build_model(config)
    dev = next(p.device for p in model.parameters() if p.requires_grad)
    module, amp = TrainModule(model, config.label_only_logits), amp_dtype(config.precision, dev)
    model.train()
    budget = memory_budget(dev)
    rows = []
    for ckpt in (False, True):
        set_grad_checkpointing(model, ckpt)
        opt, sched = make_optimizer(config, [p for p in model.parameters() if p.requires_grad], 10 ** 6)

        def step(b):
            return train_step(module, opt, sched, [b], int((b["labels"] != IGNORE).sum()), amp=amp)

        step(_synthetic_batch(tok, min(seq_lens), batch_size, 0))   # warm-up: kernels, optimizer state
        for n in sorted(seq_lens):
            plan = planned(config, model, n, batch_size, 2, dev, grad_checkpointing=ckpt)
            row = dict(seq_len=n, batch_size=batch_size, grad_checkpointing=ckpt, planned_bytes=plan.total_bytes,
                       planned_step_bytes=plan.breakdown["activations"] + plan.breakdown["logits"],
                       s_per_step=None, peak_mem_bytes=None, base_bytes=None, peak_mem_method=None, status="ok")
            if plan.total_bytes > budget:
                rows.append(dict(row, status="skipped: planner says it does not fit"))
                continue
            batch = _synthetic_batch(tok, n, batch_size, n)
            base = memory.baseline_bytes()   # after a heap trim: live memory before the step
            t0 = time.perf_counter()
            try:
                _, peak, method = memory.measure_peak(step, batch)
            except torch.OutOfMemoryError:
                rows.append(dict(row, status="out of memory"))
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                break
            rows.append(dict(row, s_per_step=time.perf_counter() - t0, peak_mem_bytes=peak, base_bytes=base,
                             peak_mem_method=method))
    return rows


def seq_len_sweep(config: TrainConfig, seq_lens=(256, 512, 1024, 2048, 4096), batch_size: int = 1,
                  timeout_s: float = 1800) -> list[dict]:
    """Time and peak memory of one training step per sequence length, without and with gradient
    checkpointing (synthetic long-input batches, the model and LoRA of `config`).

    Runs in a fresh process; before each step freed heap goes back to the OS (malloc_trim), so the CPU
    peak (VmHWM) is the step's own: peak_mem_bytes - base_bytes is what the step added. (Not
    MALLOC_MMAP_THRESHOLD_: it would halve the speed being measured.) Points the planner says cannot
    fit are skipped; a CUDA out-of-memory ends that series.
    """
    import gc
    import subprocess
    import tempfile

    if torch.cuda.is_available() and torch.cuda.is_initialized():   # hand this process's cached GPU memory back
        gc.collect()
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory(prefix="finlora-sweep-") as tmp:
        cfg_path, out = Path(tmp) / "config.json", Path(tmp) / "rows.json"
        cfg_path.write_text(json.dumps(as_stored(config)))
        cmd = [sys.executable, "-m", "finlora_utils.seqlen", str(cfg_path), str(out), ",".join(map(str, seq_lens)),
               str(batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise RuntimeError(f"seq_len_sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


if __name__ == "__main__":   # the child process of seq_len_sweep: CONFIG_JSON OUT_JSON SEQ_LENS BATCH
    _cfg, _out, _lens, _batch = sys.argv[1:5]
    _rows = _sweep_here(TrainConfig.from_dict(json.loads(Path(_cfg).read_text())),
                        [int(x) for x in _lens.split(",")], int(_batch))
    results.write_json(_out, _rows)

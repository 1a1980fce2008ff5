"""The CUDA paths nobody has executed yet, in one command, into one results JSON.

    python bench/gpu_check.py              # one GPU, < 8 min: reports/showcase/gpu/gpu_check.json
    python bench/gpu_check.py --dry-run    # the same code on CPU (tiny random model, 2 steps), ~1 min:
                                           # reports/gpu_check/dry_run.json (not committed)
    python bench/gpu_check.py --checks lora_step_8bit,lora_step_16bit --out FILE   # some of them again

Checks, each recorded as ok / failed (with the error) / skipped (with the reason, e.g. `no CUDA`):
  lora_step_16bit, _8bit, _4bit  finlora_utils.train on the embedded model at bf16 / int8 / nf4 (the
                                 paper's ranks): finite decreasing-or-not loss curve, tokens/s (and after the
                                 first step), the autocast dtype train chose, and the measured training-phase
                                 peak (torch.cuda.max_memory_allocated on CUDA) over the planner's training
                                 phase at the run's own costliest batch (train_info.memory_plan)
  paged_adamw_8bit               a 4-bit run with bitsandbytes' paged 8-bit AdamW (CUDA only), vs the planner;
                                 which of the kit's optimizer states are 8-bit and paged (bitsandbytes keeps
                                 tensors below min_8bit_size in fp32 and pages none below 100k elements), and
                                 one paged 8-bit step on a tensor large enough to be both
  autocast                       what train.amp_dtype picks here, and one step each with bf16 autocast and
                                 with fp16 autocast + GradScaler from the same start (fp16: CUDA only)
  shared_prefix                  one 4-bit micro-batch as the padded batch and packed with its shared prompt
                                 prefix once (shared_prefix.pack, the layout's attention on this device):
                                 loss and LoRA gradients agree to the compute dtype's rounding
  label_scoring                  evaluate.score_labels with and without the shared-prefix cache: the same
                                 predictions (up to 1 % flipped by rounding on near-ties; on random weights,
                                 whose label scores nearly tie, recorded but not judged), time per example,
                                 accuracy
  step_profile                   the kit's own 4-bit loop at the check's batch and at 4x it, the torch profiler
                                 over the steps after two warm-ups: per step the wall time, the host's ops and
                                 kernel launches, the GPU's kernel time and the share of the wall it fills
                                 (gpu_busy), the ops taking the most host time; a step 4x the batch in about
                                 the same time says the host, not the GPU, bounds it
  ddp_nccl                       parallel.launch DDP over 2 GPUs under torchrun with a timeout (needs >= 2)
Provenance (versions, commit, hardware, data source) comes from finlora_utils.results; the results file is
rewritten after every check, so a crash or a timeout keeps the checks before it. `--commit SHA` names the
code where the tree is a copy without .git. Exit status 1 if any check failed. Nothing is faked: a check this
machine cannot run says so.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOWCASE = ROOT / "reports" / "showcase" / "gpu" / "gpu_check.json"
DRY_RUN = ROOT / "reports" / "gpu_check" / "dry_run.json"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _config(a, tmp: Path, bits: int, **kw):
    from finlora_utils.config import TrainConfig, paper_settings

    precision, lora = paper_settings(bits)   # the paper's rank per bit width (8 / 8 / 4), alpha 16, dropout 0.05
    base = dict(model=a.model_path, tasks=(a.task,), precision=precision, lora=lora, batch_size=a.batch,
                max_steps=a.steps, max_train_samples=a.steps * a.batch, max_seq_len=a.max_seq_len, seed=a.seed,
                output_dir=str(tmp / "runs"), log_every=a.steps, warmup_ratio=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _train_check(a, tmp: Path, bits: int, **kw) -> dict:
    from finlora_utils import train

    cfg = _config(a, tmp, bits, **kw)
    res = train.train(cfg, results_dir=tmp / "results", force=True, log=lambda *_: None)
    ti = res["train_info"]
    losses = [loss for _, loss in ti["loss_curve"]]
    measured, plan, first = ti["peak_mem_bytes"], ti.get("memory_plan"), ti["first_step"]
    after_first = ti["wall_s"] - first["wall_s"]   # the first step also builds kernels and warms the allocator
    out = dict(precision=cfg.precision, rank=cfg.lora.rank, optimizer=cfg.optimizer, device=ti["device"],
               amp_dtype=ti["amp_dtype"], grad_checkpointing=ti["grad_checkpointing"], steps=ti["steps"],
               loss_first=losses[0], loss_last=losses[-1], tokens_per_s=round(ti["tokens_per_s"], 1),
               tokens_per_s_after_first_step=round((ti["nonpad_tokens"] - first["nonpad_tokens"]) / after_first, 1)
               if ti["steps"] > 1 and after_first > 0 else None,
               wall_s=round(ti["wall_s"], 2), first_step_s=round(first["wall_s"], 2), peak_mem_bytes=measured,
               peak_mem_method=ti["peak_mem_method"], memory_plan=plan, share_prefix=ti["share_prefix"],
               share_prefix_reason=ti["share_prefix_reason"])
    if plan and plan.get("predicted_peak_mem_bytes"):   # both the training phase: what the loop adds to the model
        out["measured_over_planned"] = round(measured / plan["predicted_peak_mem_bytes"], 3)
    if not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"non-finite loss in {losses}")
    return out


def check_lora_step(bits: int):
    return lambda a, tmp: _train_check(a, tmp, bits)


def check_paged_adamw(a, tmp: Path) -> dict:
    if not _cuda():
        return dict(status="skipped", reason="no CUDA: bitsandbytes' paged 8-bit AdamW needs a GPU")
    out = _train_check(a, tmp, 4, optimizer="paged_adamw_8bit")
    out["kit_states"] = _optimizer_states(_config(a, tmp, 4, optimizer="paged_adamw_8bit"))
    out["large_tensor"] = _paged_step()
    return out


def _states(opt) -> dict:
    """How bitsandbytes holds each parameter's first moment: 8-bit or fp32, paged or not."""
    import torch

    s1 = [st["state1"] for st in opt.state.values() if "state1" in st]
    return dict(tensors=len(s1), uint8=sum(t.dtype == torch.uint8 for t in s1),
                paged=sum(bool(getattr(t, "is_paged", False)) for t in s1))


def _optimizer_states(cfg) -> dict:
    """The kit's optimizer (engine.make_optimizer) after one step on the run's LoRA parameters: as many 8-bit
    states as tensors of >= memory.BNB_MIN_8BIT_SIZE elements, which the planner prices at 2 bytes."""
    import torch

    from finlora_utils import engine, memory, train

    model, _ = train.build_model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, _ = engine.make_optimizer(cfg, params, 1)
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    got = _states(opt)
    got["expected_uint8"] = sum(p.numel() >= memory.BNB_MIN_8BIT_SIZE for p in params)
    if got["uint8"] != got["expected_uint8"]:
        raise AssertionError(f"8-bit states {got['uint8']} of {got['tensors']}, the planner expects "
                             f"{got['expected_uint8']}")
    return got


def _paged_step() -> dict:
    """One PagedAdamW8bit step on a 512 x 512 tensor: large enough for 8-bit state and for paging."""
    import bitsandbytes as bnb
    import torch

    w = torch.nn.Parameter(torch.randn(512, 512, device="cuda"))
    opt = bnb.optim.PagedAdamW8bit([w], lr=1e-3)
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt.step()
    torch.cuda.synchronize()
    got = dict(_states(opt), moved=float((w.detach() - before).abs().max()))
    if got["uint8"] != 1 or got["paged"] != 1 or not 0 < got["moved"] < 1:
        raise AssertionError(f"paged 8-bit AdamW on 512 x 512: {got}, expected one uint8 paged state and a step")
    return got


def _steps_with(a, tmp: Path, amp, n: int = 2) -> list[float]:
    """n train_steps on the first batches from one seeded start, with the given autocast dtype."""
    import torch

    from finlora_utils import engine, train

    cfg = _config(a, tmp, 4)
    model, tok = train.build_model(cfg)
    data = engine.build_data(cfg, tok)
    dev = next(p.device for p in model.parameters() if p.requires_grad)
    module = train.TrainModule(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = engine.make_optimizer(cfg, params, len(data.plan))
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    losses = []
    for step in data.plan[:n]:
        micro, targets = _micro(data, step, tok.pad_token_id)
        losses.append(train.train_step(module, opt, sched, micro, targets, 1, amp, scaler) / targets)
    return losses


def _micro(data, step, pad_id) -> tuple[list[dict], int]:
    """A step's collated micro-batches and its target-token count (single process)."""
    from finlora_utils.tokenization import IGNORE, collate

    micro = [collate([data.examples[i] for i in mb], pad_id) for mb in step]
    targets = sum(len(data.examples[i]["labels"]) - data.examples[i]["labels"].count(IGNORE) for mb in step for i in mb)
    return micro, targets


def check_autocast(a, tmp: Path) -> dict:
    import torch

    from finlora_utils import train

    dev = torch.device("cuda" if _cuda() else "cpu")
    chosen = {p: str(train.amp_dtype(p, dev)).replace("torch.", "") for p in ("fp32", "bf16", "int8", "nf4")}
    out = dict(device=str(dev), chosen=chosen,
               cuda_bf16_supported=bool(_cuda() and torch.cuda.is_bf16_supported(including_emulation=False)))
    kit = train.amp_dtype("nf4", dev)
    out["kit_choice_losses"] = _steps_with(a, tmp, kit)
    if not _cuda():
        out["fp16_grad_scaler"] = dict(status="skipped", reason="no CUDA: fp16 autocast + GradScaler is the GPU path")
        return out
    f16 = _steps_with(a, tmp, torch.float16)
    b16 = _steps_with(a, tmp, torch.bfloat16)
    out["fp16_grad_scaler_losses"], out["bf16_losses"] = f16, b16
    # the first loss is computed before any update, from the same seeded start: only rounding may differ
    out["first_loss_rel_diff"] = abs(f16[0] - b16[0]) / abs(b16[0])
    if not all(math.isfinite(x) for x in f16 + b16) or out["first_loss_rel_diff"] > 0.05:
        raise AssertionError(f"fp16 {f16} vs bf16 {b16}: expected finite losses within 5 % at the first step")
    return out


def check_shared_prefix(a, tmp: Path) -> dict:
    import torch

    from finlora_utils import engine, shared_prefix, train
    from finlora_utils.config import LoraSettings
    from finlora_utils.tokenization import collate

    cfg = _config(a, tmp, 4, lora=LoraSettings(rank=4, alpha=16.0, dropout=0.0))   # no dropout: comparable grads
    model, tok = train.build_model(cfg)
    data = engine.build_data(cfg, tok)
    dev = next(p.device for p in model.parameters() if p.requires_grad)
    with torch.no_grad():   # LoRA B starts at zero, which would make every A-gradient zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05, generator=torch.Generator(p.device).manual_seed(0))
    model.train()
    rows = [data.examples[i] for i in data.plan[0][0]]
    packed = shared_prefix.pack(rows, tok.pad_token_id, cfg.max_seq_len)
    if packed is None:
        return dict(status="skipped", reason="the first micro-batch shares no prompt prefix")
    amp = train.amp_dtype(cfg.precision, dev)
    out = {}
    for name, batch in (("padded", collate(rows, tok.pad_token_id)), ("packed", packed)):
        model.zero_grad()
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, n = train.loss_fn(model, {k: v.to(dev) for k, v in batch.items()})
        (loss / n).backward()
        out[name] = (float(loss.detach()) / n, {k: p.grad.detach().float().clone() for k, p in model.named_parameters()
                                                if p.requires_grad and p.grad is not None})
    (l0, g0), (l1, g1) = out["padded"], out["packed"]
    keys = [k for k, g in g0.items() if g.norm() > 0]
    worst = max(float((g1[k] - g0[k]).norm() / g0[k].norm()) for k in keys)
    # over all LoRA gradients at once: one small tensor's bf16 rounding must not decide the check
    whole = float(torch.cat([(g1[k] - g0[k]).flatten() for k in keys]).norm()
                  / torch.cat([g0[k].flatten() for k in keys]).norm())
    res = dict(device=str(dev), amp_dtype=str(amp).replace("torch.", ""), layout=list(shared_prefix.layout(packed)),
               loss_padded=l0, loss_packed=l1, rel_grad_diff=whole, max_rel_grad_diff=worst)
    if abs(l1 - l0) > 2e-2 * abs(l0) or whole > 5e-2:
        raise AssertionError(f"packed vs padded: loss {l1} vs {l0}, relative gradient difference {whole} "
                             f"(worst tensor {worst})")
    return res


def check_label_scoring(a, tmp: Path) -> dict:
    import numpy as np

    from finlora_utils import data, evaluate as ev, models
    from finlora_utils.config import resolve_precision

    task = data.get_task(a.task)
    ds = data.load_task(a.task, "test", max_samples=a.n_score, seed=a.seed)
    prompts, gold, labels = list(ds["context"]), list(ds["target"]), list(task.labels)
    out = dict(n=len(prompts), data_source=data.source_of(ds))
    # random weights score the labels almost alike, so bf16 rounding flips near-ties far more often than on a
    # trained model (3 of 200 at SmolLM2-1.7B's shape on an H200): the agreement is recorded, not judged
    judged = not (a.model == models.TINY or a.model.startswith(models.RANDOM_PREFIX))
    if not judged:
        out["agreement_judged"] = False
    for precision in ("auto", "nf4"):
        model, tok = models.load_model(a.model_path, precision=precision)
        ev.score_labels(model, tok, prompts[:a.batch], labels, a.batch)   # warm-up
        t0 = time.perf_counter()
        shared = ev.score_labels(model, tok, prompts, labels, a.batch)
        t_shared = time.perf_counter() - t0
        plain = ev.score_labels(model, tok, prompts, labels, a.batch, share_prefix=False)
        flipped = np.flatnonzero(shared.argmax(1) != plain.argmax(1))
        top2 = np.sort(plain, axis=1)[:, -2:]
        m = ev.classification_metrics(gold, [labels[j] for j in shared.argmax(1)], labels)
        out[precision] = dict(resolved=resolve_precision(precision), device=str(next(model.parameters()).device),
                              s_per_example=t_shared / len(prompts),
                              identical_predictions=f"{len(prompts) - len(flipped)}/{len(prompts)}",
                              flipped_margins=[float(top2[i, 1] - top2[i, 0]) for i in flipped],
                              max_abs_dlogp=float(np.abs(shared - plain).max()), accuracy=m["accuracy"])
        # a cached prefix is the same arithmetic in another order: in bf16 a near-tie may flip, a bug flips many
        if judged and len(flipped) > max(1, len(prompts) // 100):
            raise AssertionError(f"{precision}: shared-prefix scoring changed {len(flipped)} of {len(prompts)} "
                                 f"predictions")
        del model
    return out


class _Profiler:
    """An on_step hook for train.train: the torch profiler over the steps after `warm` warm-up steps (the first
    builds kernels and warms the allocator), with their wall time."""

    def __init__(self, warm: int, steps: int):
        import torch
        from torch.profiler import ProfilerActivity, profile

        self.cuda = torch.cuda.is_available()
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        self.warm, self.steps, self.wall = warm, steps, None
        self.prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else []))

    def __call__(self, step: int, loss: float) -> None:
        if step == self.warm:
            self.sync()
            self.prof.start()
            self.t0 = time.perf_counter()
        elif step == self.warm + self.steps:
            self.sync()
            self.wall = time.perf_counter() - self.t0
            self.prof.stop()

    def summary(self, top: int = 12) -> dict:
        """Per step: wall ms, the host's ops and kernel launches, the GPU's kernel time and the share of the
        wall it fills, and the ops that take the most host time."""
        evs = self.prof.key_averages()
        n = self.steps

        def dev_us(e):   # torch >= 2.4 names it device time; older, cuda time
            return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) or 0

        from torch.autograd import DeviceType

        launches = sum(e.count for e in evs if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
        # the kernels' own events: the CPU op that launched a kernel carries its time too (torch's table sums so)
        kernel_ms = sum(dev_us(e) for e in evs if e.device_type != DeviceType.CPU
                        and not getattr(e, "is_user_annotation", False)) / 1e3 / n
        wall_ms = 1e3 * self.wall / n
        return dict(steps=n, wall_ms_per_step=round(wall_ms, 2),   # aten ops: nested ones (mm in linear) too
                    aten_ops_per_step=round(sum(e.count for e in evs if e.key.startswith("aten::")) / n),
                    kernel_launches_per_step=round(launches / n) if self.cuda else None,
                    gpu_kernel_ms_per_step=round(kernel_ms, 2) if self.cuda else None,
                    gpu_busy=round(kernel_ms / wall_ms, 4) if self.cuda and wall_ms > 0 else None,
                    top_host_ops=[dict(op=e.key, calls_per_step=round(e.count / n, 1),
                                       self_host_ms_per_step=round(e.self_cpu_time_total / 1e3 / n, 2),
                                       **({"self_gpu_ms_per_step": round(dev_us(e) / 1e3 / n, 2)} if self.cuda else {}))
                                  for e in sorted(evs, key=lambda e: -e.self_cpu_time_total)[:top]])


def check_step_profile(a, tmp: Path) -> dict:
    """Where a 4-bit training step's time goes (the kit's own loop, nf4 r4, the torch profiler over the steps after
    two warm-ups) at the check's batch and at 4x it: tokens/s per batch says whether the GPU or the host issuing
    its kernels bounds the step (host-bound: tokens/s grows with the batch, the GPU is busy a small share)."""
    from finlora_utils import train

    warm, steps = 2, (2 if a.dry_run else 3)
    out = {}
    for batch in (a.batch, 4 * a.batch):
        hook = _Profiler(warm, steps)
        cfg = _config(a, tmp / f"b{batch}", 4, batch_size=batch, max_steps=warm + steps,
                      max_train_samples=(warm + steps) * batch)
        ti = train.train(cfg, results_dir=tmp / f"b{batch}" / "results", force=True, log=lambda *_: None,
                         on_step=hook)["train_info"]
        if hook.wall is None:
            raise AssertionError(f"batch {batch}: the profiled steps did not run ({ti['steps']} steps)")
        row = hook.summary()
        if row["gpu_busy"] is not None and row["gpu_busy"] > 1.0:
            raise AssertionError(f"batch {batch}: GPU kernel time {row['gpu_kernel_ms_per_step']} ms over a "
                                 f"{row['wall_ms_per_step']} ms step: kernels counted twice")
        row["grad_checkpointing"] = ti["grad_checkpointing"]   # 4x the batch may switch it on: another step
        curve = dict(ti["loss_curve"])
        row["tokens_per_s"] = round(ti["nonpad_tokens"] / ti["wall_s"], 1)   # whole run, first step included
        row["loss_last"] = curve[max(curve)]
        out[f"batch_{batch}"] = row
    small, large = out[f"batch_{a.batch}"], out[f"batch_{4 * a.batch}"]
    out["step_time_ratio_4x_batch"] = round(large["wall_ms_per_step"] / small["wall_ms_per_step"], 3)
    return out


def check_ddp_nccl(a, tmp: Path) -> dict:
    import torch

    from finlora_utils import parallel

    if not _cuda():
        return dict(status="skipped", reason="no CUDA: NCCL DDP needs GPUs")
    if torch.cuda.device_count() < 2:
        return dict(status="skipped", reason=f"{torch.cuda.device_count()} GPU visible: NCCL DDP needs >= 2")
    cfg = _config(a, tmp, 4, parallel="ddp", nproc=2)
    res = parallel.launch(cfg, timeout_s=a.ddp_timeout, results_dir=tmp / "ddp", force=True, log=None)
    ti = res["train_info"]
    return dict(world_size=ti["world_size"], losses=[x for _, x in ti["loss_curve"]], wall_s=ti["wall_s"],
                ranks=ti["parallel"]["ranks"])


CHECKS = {"lora_step_16bit": check_lora_step(16), "lora_step_8bit": check_lora_step(8),
          "lora_step_4bit": check_lora_step(4), "paged_adamw_8bit": check_paged_adamw, "autocast": check_autocast,
          "shared_prefix": check_shared_prefix, "label_scoring": check_label_scoring,
          "step_profile": check_step_profile, "ddp_nccl": check_ddp_nccl}


def scrub(text: str, tmp: str) -> str:
    """An error or traceback as the committed file may hold it: the temporary folder as <tmp>, any other
    absolute path (site-packages, the device's home) by its last two parts."""
    from finlora_utils.paths import project_root
    from finlora_utils.results import ABS_PATH, relativize_text

    text = relativize_text(text.replace(tmp, "<tmp>"), project_root())
    return ABS_PATH.sub(lambda m: ".../" + "/".join(m.group(0).rstrip("/").split("/")[-2:]), text)


def run_checks(a, names=None, after_each=None) -> dict:
    """Every check in turn, each ok / failed / skipped; after_each(results so far) after every one."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="finlora-gpu-check-") as tmp:
        for name in names or CHECKS:
            t0 = time.time()
            try:
                r = CHECKS[name](a, Path(tmp) / name)
                r = dict(r) if "status" in r else dict(status="ok", **r)
                if _cuda():   # an asynchronous CUDA error is charged to the check that caused it
                    import torch

                    torch.cuda.synchronize()
            except Exception as e:   # noqa: BLE001 - one broken path must not hide the others' results
                r = dict(status="failed", error=scrub(f"{type(e).__name__}: {e}", tmp),
                         traceback=scrub(traceback.format_exc(limit=-4), tmp))
            r["seconds"] = round(time.time() - t0, 1)
            out[name] = r
            print(f"{name:<18} {r['status']:<8} {r['seconds']:>6.1f}s  {r.get('reason') or r.get('error') or ''}",
                  flush=True)
            if after_each is not None:
                after_each(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny random model, 2 steps: checks the script")
    p.add_argument("--model", help="default: embedded (dry run: tiny-random-llama); random:<shipped config> (e.g. "
                                   "random:smollm2-135m): seeded random weights of that shape, which need only the "
                                   "embedded tokenizer (paths, memory and time; accuracy means nothing)")
    p.add_argument("--task", default="fpb")
    p.add_argument("--steps", type=int, help="optimizer steps per training check (default 20; dry run 2)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--n-score", type=int, help="test prompts to score (default 200; dry run 8)")
    p.add_argument("--ddp-timeout", type=float, default=300, help="seconds for the torchrun DDP check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--commit", help="the commit this tree was copied from, where it has no .git (40 hex digits; "
                                    "default: read from git)")
    p.add_argument("--checks", help=f"comma-separated subset to run (default all: {','.join(CHECKS)})")
    p.add_argument("--out", help=f"results JSON (default {SHOWCASE.relative_to(ROOT)}; dry run "
                                 f"{DRY_RUN.relative_to(ROOT)})")
    a = p.parse_args(argv)
    names = list(dict.fromkeys(c.strip() for c in a.checks.split(",") if c.strip())) if a.checks else list(CHECKS)
    unknown = [c for c in names if c not in CHECKS]
    if unknown or not names:
        p.error(f"--checks={a.checks!r}: unknown {', '.join(unknown) or '(empty)'}; expected some of "
                f"{', '.join(CHECKS)}")
    if a.checks and not a.dry_run and not a.out:   # a subset must not replace the committed full run
        p.error(f"--checks without --out: expected a results file other than {SHOWCASE.relative_to(ROOT)}")
    from finlora_utils import results

    try:   # the code the bench starts with (edits while it runs must not relabel it)
        commit = results.run_commit(a.commit)
    except ValueError as e:
        p.error(str(e))
    if a.dry_run:
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""   # the CPU path even on a GPU machine
    a.model = a.model or ("tiny-random-llama" if a.dry_run else "embedded")
    from finlora_utils import models

    a.model_path = models.bench_model_path(a.model)
    a.steps = a.steps or (2 if a.dry_run else 20)
    a.n_score = a.n_score or (8 if a.dry_run else 200)
    if a.dry_run:
        a.batch = min(a.batch, 4)
    if not a.dry_run and not _cuda():
        p.error("no CUDA device visible: expected a GPU (or --dry-run to check the script on CPU)")
    from finlora_utils import data

    t0 = time.time()
    path = a.out or (DRY_RUN if a.dry_run else SHOWCASE)
    base = models.base_provenance(a.model)

    def write(checks: dict) -> dict:
        s = dict(wall_s=round(time.time() - t0, 1), pending=[k for k in names if k not in checks],
                 **{st: sorted(k for k, v in checks.items() if v["status"] == st)
                    for st in ("ok", "failed", "skipped")})
        # portable: the showcase copy is committed, so no path of this machine may stay in it
        results.write_bench(path, "gpu_check" + ("_dry_run" if a.dry_run else ""),
                            dict({k: v for k, v in vars(a).items() if k != "model_path"}, out=results.shareable_path(path)),
                            dict(checks=checks, summary=s), seed=a.seed, data_source=data.data_source(a.task),
                            base_model=base, portable=True, commit=commit)
        return s

    s = write(run_checks(a, names, after_each=write))
    print(f"gpu check: {len(s['ok'])} ok, {len(s['failed'])} failed, {len(s['skipped'])} skipped in "
          f"{s['wall_s']:.0f}s -> {path}")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())

"""How far the embedded 135M model goes on FPB: full train split, several epochs, 16-bit r8 and 4-bit r4.

    .venv/bin/python bench/fpb_accuracy.py                          # defaults below (about 1 h on 2 cores)
    .venv/bin/python bench/fpb_accuracy.py --configs nf4:4 --lrs 1e-3 --epochs 2
    .venv/bin/python bench/fpb_accuracy.py --model tiny-random-llama --epochs 1 --max-train-samples 64   # seconds

Never tuned on the test set:
  1. FPB's train split (3,629 sentences) is cut into `validation` (a fixed, stratified 10%: 363) and `fit`
     (the other 3,266); see finlora_utils.data (splits fit / validation).
  2. Each candidate (precision:rank x learning rate) trains on `fit` for --epochs epochs; after every
     epoch its adapter (the epoch's checkpoint) is scored on `validation`.
  3. Per precision:rank, the (learning rate, epoch) with the best validation accuracy is selected, and
     only that adapter is scored on FinLoRA's 1,212 test sentences.
  4. The headline is the configuration with the best *validation* accuracy; its test accuracy is the
     last line: `fpb accuracy: 0.XXXX`.
Scoring is the kit's default (label log-likelihood, no parsing), each adapter on a base at its training
precision (--eval-precision overrides). Results: reports/bench/fpb_accuracy.json (every candidate's
validation curve, the selections, test metrics, the environment).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--configs", default="auto:8,nf4:4",
                    help="precision:rank pairs (paper: 16-bit r8, 4-bit r4; auto = bf16 where native, else fp32)")
    ap.add_argument("--lrs", default="1e-3", help="learning rates to try, comma-separated")
    ap.add_argument("--targets", default="all-linear", help="LoRA targets: q_proj,k_proj,v_proj | all-linear | ...")
    ap.add_argument("--alpha-ratio", type=float, default=2.0, help="LoRA alpha = ratio x rank")
    # 0: torch's CPU dropout RNG is a third of a training step here (peft draws one mask per LoRA module)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-train-samples", type=int, default=0, help="0 = the whole fit split")
    ap.add_argument("--eval-precision", default=None, help="base precision for scoring (default: the training one)")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-memory", default="fast",
                    help="fast (full speed; this bench is about accuracy) or exact (the planner's peak, slower)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "fpb_accuracy"))
    ap.add_argument("--force", action="store_true", help="retrain candidates that finished earlier")
    return ap.parse_args(argv)


def _configs(a, epoch_steps: int):
    from finlora_utils.config import LoraSettings, TrainConfig

    out = []
    for pair in a.configs.split(","):
        precision, _, rank = pair.strip().partition(":")
        for lr in (float(x) for x in a.lrs.split(",")):
            lora = LoraSettings(rank=int(rank), alpha=a.alpha_ratio * int(rank), dropout=a.dropout,
                                targets=tuple(a.targets.split(",")))
            out.append(TrainConfig(model=a.model, tasks=("fpb",), precision=precision, lora=lora, lr=lr,
                                   epochs=float(a.epochs), batch_size=a.batch, train_split="fit",
                                   max_train_samples=a.max_train_samples, seed=a.seed, warmup_ratio=0.03,
                                   log_every=50, output_dir=str(Path(a.out) / "runs"),
                                   save_every=epoch_steps,   # a checkpoint (and a validation score) per epoch
                                   variant_tag=f"lr{lr:g}", cpu_memory=a.cpu_memory))
    return out


class Scorer:
    """One base model per precision with a LoRA skeleton; load any saved adapter weights into it and score."""

    def __init__(self, a):
        self.a, self.models = a, {}

    def model(self, cfg, precision):
        from peft import get_peft_model

        from finlora_utils.lora import build_lora_config
        from finlora_utils.models import load_model

        key = (precision, repr(cfg.lora))
        if key not in self.models:
            self.models.clear()   # one at a time: candidates of one precision follow each other
            base, tok = load_model(cfg.model, precision)
            self.models[key] = (get_peft_model(base, build_lora_config(cfg.lora, base)).eval(), tok)
        return self.models[key]

    def score(self, cfg, adapter_file: Path, dataset) -> dict:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from finlora_utils import evaluate

        model, tok = self.model(cfg, self.a.eval_precision or cfg.precision)
        res = set_peft_model_state_dict(model, load_file(str(adapter_file)))
        if getattr(res, "unexpected_keys", None):
            raise RuntimeError(f"{adapter_file}: weights do not match the LoRA shape ({res.unexpected_keys[:2]})")
        info = evaluate.evaluate(model, tok, dataset, mode="score", batch_size=self.a.eval_batch,
                                 keep_predictions=False)
        return {k: info[k] for k in ("accuracy", "f1_weighted", "f1_macro", "pred_distribution", "s_per_example")}


def run_candidate(cfg, a, scorer, val, epoch_steps: int) -> dict:
    """Train on `fit`, scoring the validation split after every epoch; epoch adapters are kept."""
    from finlora_utils import results, train
    from finlora_utils.artifacts import CKPT_DIR

    run_dir = Path(cfg.output_dir) / cfg.run_id()
    keep = Path(a.out) / "epochs" / cfg.run_id()
    curve_file = keep / "validation.json"
    if curve_file.exists() and not a.force:
        return json.loads(curve_file.read_text())
    partial = keep / "partial.json"   # epochs scored before an interruption (train.train resumes the rest)
    if a.force:
        shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True, exist_ok=True)
    curve = json.loads(partial.read_text()) if partial.exists() else []

    def on_step(step, loss):
        # the loop checkpoints epoch ends (save_every = epoch_steps) before it calls this hook, except the
        # last step (the final adapter supersedes it): only a checkpoint of *this* step is this epoch's
        latest = run_dir / CKPT_DIR / "latest"
        if step % epoch_steps == 0 and latest.exists() and latest.read_text().strip() == f"step-{step:06d}":
            ck = run_dir / CKPT_DIR / latest.read_text().strip()
            _keep_epoch(ck / "adapter.safetensors", keep, step // epoch_steps, curve, cfg, scorer, val, step)

    t0 = time.time()
    result = train.train(cfg, results_dir=Path(a.out) / "results", force=a.force, on_step=on_step)
    final = Path(result["train_info"]["adapter_path"])
    final = final if final.is_absolute() else ROOT / final
    last_epoch = round(result["train_info"]["steps"] / epoch_steps)
    if not any(c["epoch"] == last_epoch for c in curve):
        _keep_epoch(final / "adapter_model.safetensors", keep, last_epoch, curve, cfg, scorer, val,
                    result["train_info"]["steps"])
    out = dict(run_id=cfg.run_id(), precision=cfg.precision, rank=cfg.lora.rank, lr=cfg.lr, curve=curve,
               train_wall_s=result["train_info"]["wall_s"], total_s=time.time() - t0,
               final_train_loss=result["train_info"]["loss_curve"][-1][1], config=cfg.to_dict(),
               # the training's memory as train measured it (cpu_memory fast: the heap glibc keeps included)
               **{k: result["train_info"].get(k) for k in ("peak_mem_bytes", "process_peak_mem_bytes",
                                                            "peak_mem_method", "memory_plan")})
    results.write_json(keep / "validation.json", out)
    return out


def _keep_epoch(src: Path, keep: Path, epoch: int, curve: list, cfg, scorer, val, step: int) -> None:
    from finlora_utils import results

    dst = keep / f"epoch-{epoch}.safetensors"
    shutil.copyfile(src, dst)
    m = scorer.score(cfg, dst, val)
    curve.append(dict(epoch=epoch, step=step, adapter=str(dst), **m))
    results.write_json(keep / "partial.json", curve)
    print(f"[fpb_accuracy] {cfg.run_id()} epoch {epoch}: validation accuracy {m['accuracy']:.4f} "
          f"weighted F1 {m['f1_weighted']:.4f}", flush=True)


def main(argv=None) -> int:
    a = _args(argv)
    from finlora_utils import data, models, results
    from finlora_utils.data.hashes import file_hashes

    commit = results.git_commit()   # the code the bench starts with (edits while it runs must not relabel it)

    val, test = data.load_task("fpb", "validation", allow_sample=False), data.load_task("fpb", "test", allow_sample=False)
    n_fit = len(data.load_task("fpb", "fit", allow_sample=False))
    if a.max_train_samples:
        n_fit = min(n_fit, a.max_train_samples)
    epoch_steps = -(-n_fit // a.batch)   # batch_plan's steps per epoch (grad_accum 1)
    majority = max(test.unique("target"), key=lambda t: test["target"].count(t))
    base_rate = test["target"].count(majority) / len(test)
    scorer, cands = Scorer(a), []
    configs = _configs(a, epoch_steps)
    for cfg in configs:
        print(f"[fpb_accuracy] candidate {cfg.run_id()}: {n_fit} fit examples, {a.epochs} epochs x "
              f"{epoch_steps} steps, lr {cfg.lr:g}, targets {a.targets}", flush=True)
        cands.append(run_candidate(cfg, a, scorer, val, epoch_steps))

    rows = []
    for pr in dict.fromkeys((c["precision"], c["rank"]) for c in cands):
        pool = [(e, c) for c in cands if (c["precision"], c["rank"]) == pr for e in c["curve"]]
        # best validation accuracy; ties -> weighted F1, then the earlier epoch
        e, c = max(pool, key=lambda ec: (ec[0]["accuracy"], ec[0]["f1_weighted"], -ec[0]["epoch"]))
        cfg = configs[[x["run_id"] for x in cands].index(c["run_id"])]
        t = scorer.score(cfg, Path(e["adapter"]), test)
        rows.append(dict(precision=pr[0], rank=pr[1], lr=c["lr"], epoch=e["epoch"], val_accuracy=e["accuracy"],
                         test_accuracy=t["accuracy"], test_weighted_f1=t["f1_weighted"],
                         test_macro_f1=t["f1_macro"], test_pred_distribution=t["pred_distribution"],
                         run_id=c["run_id"], adapter=e["adapter"]))

    print("\ncandidate                               epoch  val acc  val wF1")
    for c in cands:
        for e in c["curve"]:
            print(f"{c['run_id']:<40} {e['epoch']:>5}  {e['accuracy']:.4f}   {e['f1_weighted']:.4f}")
    print(f"\nselected on validation, scored once on FinLoRA's FPB test ({len(test)} sentences; majority "
          f"'{majority}' = {base_rate:.4f}; FinLoRA Llama-3.1-8B: 0.84-0.865)")
    print("precision  rank  lr      epoch  val acc  test acc  test wF1  test macro F1")
    for r in rows:
        print(f"{r['precision']:<9} {r['rank']:>5}  {r['lr']:<7g} {r['epoch']:>5}  {r['val_accuracy']:.4f}   "
              f"{r['test_accuracy']:.4f}    {r['test_weighted_f1']:.4f}    {r['test_macro_f1']:.4f}")
    best = max(rows, key=lambda r: r["val_accuracy"])   # chosen on validation only
    path = Path(a.out).with_suffix(".json")
    results.write_bench(path, "fpb_accuracy", dict(vars(a)), seed=a.seed, data_source="real", commit=commit,
                        base_model=models.base_provenance(a.model),
                        data_files={split: file_hashes(["fpb"], split) for split in ("train", "test")},
                        eval_info=dict(candidates=cands, selected=rows, headline=best, majority_baseline=base_rate,
                                       fit_examples=n_fit, validation_examples=len(val), test_examples=len(test)))
    print(f"results: {path}")
    print(f"fpb accuracy: {best['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    from finlora_utils.errors import cli_entry   # a user's mistake: one error line, exit 2

    sys.exit(cli_entry(main)())

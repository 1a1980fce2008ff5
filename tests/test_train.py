"""finlora_utils.train: label-only loss, QLoRA training, checkpoints/resume, outputs, early errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from finlora_utils import train
from finlora_utils.config import ConfigError, LoraSettings, TrainConfig
from finlora_utils.tokenization import collate, encode

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ("Instruction: What is the sentiment of this news? Please choose an answer from "
           "{negative/neutral/positive}.\nInput: Sales fell 12 % in the quarter .\nAnswer: ")


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = dict(model="tiny-random-llama", tasks="fpb", precision="nf4", max_train_samples=24, batch_size=4,
                max_steps=6, lr=5e-3, warmup_ratio=0.0, output_dir=str(tmp_path / "runs"), log_every=100)
    base.update(kw)
    return TrainConfig(**base)


def run(cfg, tmp_path, **kw):
    return train.train(cfg, results_dir=tmp_path / "results", log=lambda *_: None, **kw)


def adapter_weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(path) / "adapter_model.safetensors")


def _batch(tok, n=3):
    targets = ["negative", "neutral", "positive"][:n]
    return collate([encode(tok, CONTEXT.replace("12", str(10 + i)), t) for i, t in enumerate(targets)],
                   tok.pad_token_id)


def _perturb_lora_b(model, seed=1):
    """LoRA B starts at zero, which makes every A-gradient zero; give B values so both are tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _losses_and_grads(model, batches) -> list[tuple[float, int, dict]]:
    """(summed loss, target tokens, LoRA gradients of the mean loss) of each batch, from a zero gradient."""
    out = []
    for batch in batches:
        model.zero_grad()
        loss, n = train.loss_fn(model, batch)
        (loss / n).backward()
        out.append((loss.item(), n, _lora_grads(model)))
    return out


def _lora_grads(model) -> dict:
    # a None gradient (no path back to the parameter) counts as zero
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_label_only_logits_match_full_logits(tmp_path, precision):
    cfg = tiny_config(tmp_path, precision=precision, lora=LoraSettings(rank=4, dropout=0.0))
    model, tok = train.build_model(cfg)
    _perturb_lora_b(model)
    model.train()
    batch = _batch(tok)
    out = {}
    for label_only in (True, False):
        model.zero_grad()
        loss, n = train.loss_fn(model, batch, label_only=label_only)
        (loss / n).backward()
        out[label_only] = (loss.item() / n, n, _lora_grads(model))
    (l1, n1, g1), (l0, n0, g0) = out[True], out[False]
    assert n1 == n0 == 6                              # 3 one-token targets + eos each
    assert l1 == pytest.approx(l0, rel=1e-5)
    for k in g0:
        assert g0[k].abs().sum() > 0, k
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-7)


def test_attention_kernel_is_the_matmul_path_for_short_cpu_batches_only():
    """train.loss_fn and the pipeline stages share this choice: the fused flash kernel for long sequences or
    under checkpointing, plain matmul attention (which the planner prices apart) for short CPU batches."""
    from torch.profiler import profile

    q = torch.randn(2, 3, 16, 8, requires_grad=True)
    cpu = torch.device("cpu")

    def ops(ctx) -> set[str]:
        with profile() as prof, ctx:
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
        return {e.key for e in prof.key_averages()}

    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert flash not in ops(train.attention_kernel(16, cpu, checkpointing=False))
    assert flash in ops(train.attention_kernel(16, cpu, checkpointing=True))
    assert flash in ops(train.attention_kernel(train.SHORT_ATTENTION + 1, cpu, checkpointing=False))


def test_loss_counts_only_target_tokens(tmp_path):
    cfg = tiny_config(tmp_path, precision="fp32")
    model, tok = train.build_model(cfg)
    batch = _batch(tok)
    with torch.no_grad():
        loss, n = train.loss_fn(model, batch)
        logits = train.causal_lm(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # by hand: cross-entropy at the positions before each target token / eos, nowhere else
    ref = 0.0
    for r in range(3):
        pos = (batch["labels"][r] != -100).nonzero().flatten()
        ref += torch.nn.functional.cross_entropy(logits[r, pos - 1], batch["labels"][r, pos], reduction="sum")
    assert n == 6 and loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_training_pads_to_a_multiple_of_8_and_the_loss_does_not_see_it(tmp_path):
    """Few distinct shapes keep the CPU runtime's per-shape caches from growing over a run (60 steps of the cpu
    preset's 16-bit run: training peak 524 -> 354 MiB), and padding never changes the loss or the gradients."""
    from finlora_utils.tokenization import PAD_MULTIPLE, padded_length

    assert PAD_MULTIPLE == 8 and [padded_length(n, 512) for n in (1, 67, 72, 73)] == [8, 72, 72, 80]
    assert padded_length(67, 70) == 70 and padded_length(75, 70) == 75   # never past max_seq_len, never below
    cfg = tiny_config(tmp_path, precision="fp32", lora=LoraSettings(rank=4, dropout=0.0))
    model, tok = train.build_model(cfg)
    _perturb_lora_b(model)
    rows = [encode(tok, CONTEXT.replace("12", str(10 + i)), t) for i, t in enumerate(["negative", "neutral"])]
    longest = max(len(r["input_ids"]) for r in rows)
    (padded,), weights = train.shard_step(rows, [[0, 1]], 0, 1, tok.pad_token_id, 512)
    assert weights == [1.0] and padded["input_ids"].shape[1] == padded_length(longest, 512) > longest
    assert padded["input_ids"].shape[1] % 8 == 0
    out = _losses_and_grads(model, [collate(rows, tok.pad_token_id), padded])
    assert out[0][1] == out[1][1] and out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    for k, g in out[0][2].items():
        torch.testing.assert_close(out[1][2][k], g, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"length=3: expected at least"):
        collate(rows, tok.pad_token_id, 3)


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_shared_prefix_batch_gives_the_padded_batch_loss_and_gradients(tmp_path, precision):
    """The packed layout (the prompts' common prefix once, then each example) computes the same loss and LoRA
    gradients as the padded batch: rotary positions restart after the prefix, attention sees the prefix
    and the example's own earlier tokens only."""
    from finlora_utils import shared_prefix
    from finlora_utils.tokenization import common_prefix_len

    cfg = tiny_config(tmp_path, precision=precision, lora=LoraSettings(rank=4, dropout=0.0))
    model, tok = train.build_model(cfg)
    _perturb_lora_b(model)
    model.train()
    rows = [encode(tok, CONTEXT.replace("12", str(10 + i)), t) for i, t in enumerate(["negative", "neutral"])]
    rows.append(encode(tok, CONTEXT.replace("Sales fell", "Operating profit of the group rose"), "positive"))
    (packed,), _ = train.shard_step(rows, [[0, 1, 2]], 0, 1, tok.pad_token_id, 512, pack=True)
    p, b, s = shared_prefix.layout(packed)
    assert p == common_prefix_len([r["input_ids"] for r in rows]) > 10 and b == 3 and s % 8 == 0
    assert packed["input_ids"].shape == (1, p + b * s) and packed["position_ids"][0, p + s].item() == p
    out = _losses_and_grads(model, [collate(rows, tok.pad_token_id), packed])
    assert out[0][1] == out[1][1] == sum(len(r["labels"]) - r["labels"].count(-100) for r in rows)
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-5)
    # the same sums in another order: exact to fp32 rounding, or to bf16's where the quantized model computes in
    # bf16 (nf4 on CPUs with native bf16: the prefix rows' gradient is summed inside a bf16 matmul)
    bf16 = train.causal_lm(model).model.layers[0].input_layernorm.weight.dtype == torch.bfloat16
    for k, g in out[0][2].items():
        assert g.abs().sum() > 0, k
        assert float((out[1][2][k] - g).norm() / g.norm()) < (2e-2 if bf16 else 1e-5), k


def test_shared_prefix_batch_past_the_short_attention_length_takes_the_fused_kernel_and_agrees(tmp_path):
    """Examples longer than train.SHORT_ATTENTION run the packed layout's masked attention through the fused
    kernel (the matmul path only below it): the same loss and gradients as the padded batch there too."""
    from finlora_utils import shared_prefix

    model, tok = train.build_model(tiny_config(tmp_path, precision="fp32", lora=LoraSettings(rank=4, dropout=0.0)))
    _perturb_lora_b(model)
    model.train()
    long = CONTEXT.replace("Sales fell 12 % in the quarter .", "Sales fell 12 % in the quarter . " * 20)
    rows = [encode(tok, long.replace("12", str(10 + i), 1), t) for i, t in enumerate(["negative", "neutral"])]
    (packed,), _ = train.shard_step(rows, [[0, 1]], 0, 1, tok.pad_token_id, 512, pack=True)
    p, _, s = shared_prefix.layout(packed)
    assert s > train.SHORT_ATTENTION and p > 10
    (l0, n0, g0), (l1, n1, g1) = _losses_and_grads(model, [collate(rows, tok.pad_token_id), packed])
    assert n0 == n1 and l1 == pytest.approx(l0, rel=1e-5)
    for k, g in g0.items():
        assert float((g1[k] - g).norm() / g.norm()) < 1e-5, k


def test_shared_prefix_packs_only_rows_that_share_one(tmp_path):
    from finlora_utils import shared_prefix
    from types import SimpleNamespace

    tok = train.build_model(tiny_config(tmp_path))[1]
    a = encode(tok, CONTEXT, "negative")
    other = encode(tok, "Tell me: " + CONTEXT, "neutral")
    assert shared_prefix.pack([a], tok.pad_token_id, 512) is None             # one row: nothing to share
    # a layout given from outside (pipeline chunks of one micro-batch) must fit the rows
    b = encode(tok, CONTEXT, "positive")
    shape = shared_prefix.layout_of([a, b], 512)
    assert shared_prefix.pack([a, b], tok.pad_token_id, 512, shape)["input_ids"].shape[1] == shape[0] + 2 * shape[1]
    with pytest.raises(ValueError, match=rf"^shape=\({shape[0] + 1}, {shape[1]}\): expected rows sharing "):
        shared_prefix.pack([a, b], tok.pad_token_id, 512, (shape[0] + 1, shape[1]))   # they differ at token P
    if a["input_ids"][0] != other["input_ids"][0]:
        assert shared_prefix.pack([a, other], tok.pad_token_id, 512) is None  # no common first token
    (single,), _ = train.shard_step([a], [[0]], 0, 1, tok.pad_token_id, 512, pack=True)
    assert not shared_prefix.is_packed(single) and single["input_ids"].shape[0] == 1
    twice = shared_prefix.pack([a, a], tok.pad_token_id, 512)   # identical rows keep one token of their own
    assert shared_prefix.layout(twice)[0] == len(a["input_ids"]) - 1
    gpt2 = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"), set_attn_implementation=None)
    assert shared_prefix.supports(gpt2, 64) == (False, "model_type 'gpt2' is not one of llama, mistral, qwen2, qwen3")
    windowed = SimpleNamespace(config=SimpleNamespace(model_type="mistral", sliding_window=32),
                               set_attn_implementation=None)
    assert shared_prefix.supports(windowed, 64) == (False, "sliding window 32 < 64 tokens")


def test_runs_record_whether_they_shared_the_prefix(tmp_path):
    on = run(tiny_config(tmp_path, precision="fp32", max_steps=2), tmp_path)["train_info"]
    assert on["share_prefix"] is True and on["share_prefix_reason"] == "config"
    assert on["memory_plan"]["shared_prefix"] > 10
    off = run(tiny_config(tmp_path, precision="fp32", max_steps=2, grad_checkpointing="on", variant_tag="ckpt"),
              tmp_path)["train_info"]
    assert off["share_prefix"] is False and "checkpointing" in off["share_prefix_reason"]
    assert off["memory_plan"]["shared_prefix"] == 0
    lines = []
    train.train(tiny_config(tmp_path, precision="fp32", max_steps=1, share_prefix=False, variant_tag="off"),
                results_dir=tmp_path / "results", log=lines.append)
    assert "padded batches (share_prefix off)" in lines[0], lines[0]


def test_4bit_lora_gradients_after_generate(tmp_path):
    """bitsandbytes' AVX-512-BF16 CPU path repacks 4-bit weights on the first no-grad forward; training
    after that gets wrong LoRA gradients unless models.fix_bnb_cpu disabled the path (load_model does)."""
    import bitsandbytes as bnb

    from finlora_utils.hardware import cpu_flag as _cpu_flag

    cfg = tiny_config(tmp_path, lora=LoraSettings(rank=4, dropout=0.0))

    def grads(after_generate: bool, fixed: bool = True):
        model, tok = train.build_model(cfg)
        _perturb_lora_b(model)
        if not fixed:
            for m in model.modules():
                if isinstance(m, bnb.nn.Linear4bit):
                    m.support_avx512bf16_for_cpu = True
        batch = _batch(tok)
        if after_generate:
            model.eval()
            with torch.no_grad():
                model.generate(input_ids=batch["input_ids"][:1, :20], max_new_tokens=3, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        model.train()
        loss, n = train.loss_fn(model, batch)
        (loss / n).backward()
        return _lora_grads(model)

    reference, after = grads(False), grads(True)
    for k in reference:
        assert after[k].abs().sum() > 0, f"{k}: zero gradient after generate"
        torch.testing.assert_close(after[k], reference[k], rtol=1e-3, atol=1e-6)
    if _cpu_flag("avx512_bf16"):   # this CPU has the faulty path: show it breaks the gradients unfixed
        broken = grads(True, fixed=False)
        assert any(not torch.allclose(broken[k], reference[k], rtol=1e-2, atol=1e-5) for k in reference)


def test_cpu_memory_fast_trains_the_same_adapter_and_says_its_peak_keeps_the_heap(tmp_path):
    """cpu_memory only changes how glibc's heap treats freed memory: same seed, same losses and weights; the
    fast run's peak is labelled as including the kept heap (not what the planner predicts)."""
    seen = {}
    for mode in ("fast", "exact"):
        ti = run(tiny_config(tmp_path / mode, max_steps=3, max_train_samples=12, cpu_memory=mode),
                 tmp_path / mode)["train_info"]
        seen[mode] = (ti["loss_curve"], ti["peak_mem_method"], adapter_weights(ti["adapter_path"]))
    assert seen["fast"][0] == seen["exact"][0]
    assert (seen["fast"][1], seen["exact"][1]) == ("vmhwm_heap_retained", "vmhwm")
    for k, w in seen["exact"][2].items():
        assert torch.equal(seen["fast"][2][k], w), k


def test_qlora_on_tiny_model_lowers_target_loss(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=12, lr=5e-2, max_train_samples=16)
    res = run(cfg, tmp_path)
    ti = res["train_info"]
    before = ti["loss_curve"][0][1]                           # step 1's loss is the untrained adapter's
    last = sum(loss for _, loss in ti["loss_curve"][-3:]) / 3
    assert last < before - 0.2, ti["loss_curve"]
    assert ti["steps"] == 12 and ti["examples"] == 48 and ti["target_tokens"] > 0
    assert ti["label_only_logits"] and ti["grad_checkpointing"] is False and ti["peak_mem_bytes"] > 0
    # one definition of peak training memory: the training phase above the loaded process, and the whole process
    assert ti["peak_mem_definition"].startswith("training phase") and ti["peak_mem_method"].startswith("vmhwm")
    assert ti["process_peak_mem_bytes"] >= ti["baseline_mem_bytes"] + ti["peak_mem_bytes"]
    mp = ti["memory_plan"]   # the planner's prediction of the same quantity at the run's costliest batch
    assert mp["batch"] == cfg.batch_size and 0 < mp["seq_len"] <= cfg.max_seq_len and mp["device"] == "cpu"
    assert mp["predicted_peak_mem_bytes"] > 0 and mp["warm_process"] in (True, False)
    assert ti["tokens"] >= ti["nonpad_tokens"] > ti["target_tokens"]
    first = ti["first_step"]   # timed apart: a fresh process's warm-up, which benches report separately
    assert first["step"] == 1 and 0 < first["wall_s"] < ti["wall_s"]
    assert 0 < first["target_tokens"] < ti["target_tokens"]
    assert ti["lora_dropout_kernel"] == "packed 32-bit mask"   # CPU: finlora_utils.dropout's mask
    saved = json.loads(Path(res["_path"]).read_text())
    assert saved["run_id"] == "fpb_tiny-random-llama_4bit_r4" and saved["train_info"]["loss_curve"] == ti["loss_curve"]
    assert saved["run_info"]["config"]["precision"] == "nf4" and saved["meta_info"]["packages"]["torch"]
    files = saved["run_info"]["data_files"]   # the real file's sha256, or None and the sample file read instead
    assert list(files) in (["fpb/Sentences_50Agree.txt"], ["fpb/Sentences_50Agree.txt", "sample-v1/fpb_train.jsonl"])
    assert all(files.values()) or files["fpb/Sentences_50Agree.txt"] is None
    assert saved["meta_info"]["base_model"]["source"].startswith("random init")   # base provenance recorded
    card = (Path(ti["adapter_path"]) / "README.md").read_text()
    assert "base_model:" in card and "rank 4" in card and "loss on target tokens" in card
    assert ti["adapter_bytes"] == (Path(ti["adapter_path"]) / "adapter_model.safetensors").stat().st_size


def test_adapter_loads_with_plain_peft_and_gives_identical_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from finlora_utils.models import default_compute_dtype, fix_bnb_cpu, load_tokenizer, resolve_model_path

    held = {}

    def keep(module):
        held["module"] = module
        return module

    res = run(tiny_config(tmp_path, max_steps=4), tmp_path, wrap_model=keep)
    ours = held["module"].model.eval()
    dtype = default_compute_dtype()
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path("tiny-random-llama"), dtype=dtype, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=dtype))
    plain = PeftModel.from_pretrained(base, res["train_info"]["adapter_path"]).eval()
    # the same bitsandbytes CPU kernel on both sides (its packed bf16 inference path rounds differently)
    fix_bnb_cpu(plain)
    x = _batch(load_tokenizer("tiny-random-llama"))
    with torch.no_grad():
        a = ours(input_ids=x["input_ids"]).logits
        b = plain(input_ids=x["input_ids"]).logits
    assert any(p.abs().sum() > 0 for n, p in plain.named_parameters() if "lora_B" in n)   # trained, not the init
    mine = dict(ours.named_parameters())
    for n, p in plain.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, mine[n]), n
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_after_crash_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    from finlora_utils import results

    commits = iter(["a" * 40] + ["c" * 40] * 10)   # the tree is committed to while the run trains
    monkeypatch.setattr(results, "git_commit", lambda: next(commits))
    ref = run(tiny_config(tmp_path / "a", max_steps=6), tmp_path / "a",
              on_step=lambda step, loss: step == 3 and results.git_commit())
    assert ref["run_info"]["git_commit"] == "a" * 40   # the code it started with, not the commit made since
    assert "first_segment_git_commit" not in ref["train_info"]

    class Crash(RuntimeError):
        pass

    def crash_at_5(step, loss):
        if step == 5:
            raise Crash

    cfg = tiny_config(tmp_path / "b", max_steps=6, save_every=2)
    monkeypatch.setattr(results, "git_commit", lambda: "a" * 40)
    with pytest.raises(Crash):
        run(cfg, tmp_path / "b", on_step=crash_at_5)
    ckpt = Path(cfg.output_dir) / cfg.run_id() / "checkpoints"
    assert (ckpt / "latest").read_text() == "step-000004"
    monkeypatch.setattr(results, "git_commit", lambda: "b" * 40)
    resumed = run(cfg, tmp_path / "b")
    assert resumed["train_info"]["resumed_from_step"] == 4
    # steps 1-4 ran other code than steps 5-6: both commits are on record
    assert resumed["run_info"]["git_commit"] == "b" * 40
    assert resumed["train_info"]["first_segment_git_commit"] == "a" * 40
    assert resumed["train_info"]["first_step"]["step"] == 5   # the resumed process's own first step
    assert resumed["train_info"]["loss_curve"] == ref["train_info"]["loss_curve"]
    wa, wb = adapter_weights(ref["train_info"]["adapter_path"]), adapter_weights(resumed["train_info"]["adapter_path"])
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-8)
    assert not ckpt.exists()   # a finished run keeps the adapter, not the checkpoints


def test_sigkill_mid_step_loses_only_steps_since_checkpoint(tmp_path):
    """A real SIGKILL inside the forward of step 4 (checkpoint at step 2), then resume: same adapter."""
    cfg = tiny_config(tmp_path, max_steps=5, save_every=2)
    script = textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from finlora_utils import train
        from finlora_utils.config import TrainConfig
        cfg = TrainConfig.from_dict(json.loads({json.dumps(cfg.to_dict(), default=list)!r}))
        calls = {{"n": 0}}
        def kill_in_step_4(module, args):
            calls["n"] += 1
            if calls["n"] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
        def wrap(module):
            module.register_forward_pre_hook(kill_in_step_4)
            return module
        train.train(cfg, results_dir={str(tmp_path / "results")!r}, wrap_model=wrap)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_dir = Path(cfg.output_dir) / cfg.run_id()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-000002"
    assert not (tmp_path / "results" / f"{cfg.run_id()}.json").exists()
    resumed = run(cfg, tmp_path)
    ref = run(tiny_config(tmp_path / "ref", max_steps=5), tmp_path / "ref")
    assert resumed["train_info"]["resumed_from_step"] == 2
    wa, wb = adapter_weights(ref["train_info"]["adapter_path"]), adapter_weights(resumed["train_info"]["adapter_path"])
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-8)


def test_finished_run_is_skipped_unless_forced(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, max_steps=2)
    old_mask = os.umask(0o022)
    try:
        first = run(cfg, tmp_path)
    finally:
        os.umask(old_mask)
    adapter = Path(first["train_info"]["adapter_path"])
    # an adapter and its results are for sharing: the umask's permissions, not safetensors' owner-only file
    assert [(p.name, p.stat().st_mode & 0o777) for p in sorted([adapter, *adapter.iterdir()])] == \
        [(p.name, 0o755 if p.is_dir() else 0o644) for p in sorted([adapter, *adapter.iterdir()])]
    assert Path(first["_path"]).stat().st_mode & 0o777 == 0o644

    def no_model(*a, **k):
        raise AssertionError("a finished run must not load the model again")

    monkeypatch.setattr(train, "build_model", no_model)
    again = run(tiny_config(tmp_path, max_steps=2, log_every=1), tmp_path)   # cosmetic change: still finished
    assert again["train_info"] == first["train_info"]
    with pytest.raises(ConfigError, match=r"lr=0\.001.*force=True"):
        run(tiny_config(tmp_path, max_steps=2, lr=1e-3), tmp_path)
    with pytest.raises(AssertionError, match="must not load"):
        run(cfg, tmp_path, force=True)


def test_a_forced_retrain_killed_while_saving_leaves_no_stale_results(tmp_path, monkeypatch):
    """The new adapter replaces the old one before the new results are written: in between, the old results
    must already be gone, or the next call would take old numbers for the new adapter as a finished run."""
    from finlora_utils import engine

    cfg = tiny_config(tmp_path, max_steps=2)
    path = Path(run(cfg, tmp_path)["_path"])
    real_save, real_build = engine.save_adapter, train.build_model

    def save_then_die(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt("killed between the adapter and the results")

    monkeypatch.setattr(engine, "save_adapter", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path, force=True)
    assert not path.exists()
    monkeypatch.setattr(engine, "save_adapter", real_save)
    built = []
    monkeypatch.setattr(train, "build_model", lambda *a, **k: built.append(1) or real_build(*a, **k))
    again = run(cfg, tmp_path)   # not "finished earlier": it trains again and writes its results
    assert built and path.exists() and again["train_info"]["steps"] == 2


def test_bad_parameters_fail_before_training(tmp_path, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model must not load for a bad config")

    monkeypatch.setattr(train, "build_model", no_model)
    with pytest.raises(ConfigError, match=r"^lr=0: expected > 0 and finite"):
        tiny_config(tmp_path, lr=0)
    with pytest.raises(ConfigError, match=r"^lr=-0\.1: expected > 0"):
        tiny_config(tmp_path, lr=-0.1)
    with pytest.raises(ConfigError, match=r"^tasks='fbp': unknown task \(did you mean 'fpb'\?\); expected one of "
                                          r".*fpb.*tfns_finlora_labels"):
        run(tiny_config(tmp_path, tasks="fbp"), tmp_path)
    with pytest.raises(ConfigError, match=r"^max_seq_len=24: expected >= \d+: the instruction"):
        run(tiny_config(tmp_path, max_seq_len=24), tmp_path)
    with pytest.raises(ConfigError, match=r"^optimizer='paged_adamw_8bit': expected adamw on CPU"):
        if torch.cuda.is_available():
            raise ConfigError("optimizer='paged_adamw_8bit': expected adamw on CPU (skipped on CUDA)")
        run(tiny_config(tmp_path, optimizer="paged_adamw_8bit"), tmp_path)


@pytest.mark.parametrize("pack", [False, True])
def test_gradient_accumulation_and_sharding_give_the_single_batch_gradient(tmp_path, monkeypatch, pack):
    """train_step's normalisation: 2 micro-batches (or 2 DDP shards averaged) == one batch of 4, padded or
    packed with the shared prefix once (shared_prefix.pack, as shard_step lays them out)."""
    from finlora_utils import shared_prefix

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: None)   # compare raw gradients
    cfg = tiny_config(tmp_path, precision="fp32", lora=LoraSettings(rank=4, dropout=0.0))
    model, tok = train.build_model(cfg)
    _perturb_lora_b(model)
    exs = [encode(tok, CONTEXT.replace("12", str(i)), t) for i, t in enumerate(["negative", "positive"] * 2)]
    exs[1] = encode(tok, CONTEXT.replace("Sales", "Sales and profit"), "neutral")   # unequal lengths
    n_targets = sum(len(e["labels"]) - e["labels"].count(-100) for e in exs)
    module = train.TrainModule(model)

    def grads_of(groups, world_size=1):
        acc = None
        for rank_groups in groups:   # each entry: one rank's micro-batches
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            captured = {}
            orig = opt.step

            def step(*a, **k):
                captured.update(_lora_grads(model))
                return orig(*a, **k)

            opt.step = step
            micro = [(shared_prefix.pack(g, tok.pad_token_id, 512) if pack else None) or collate(g, tok.pad_token_id)
                     for g in rank_groups]
            assert all(shared_prefix.is_packed(b) == pack for b in micro)
            train.train_step(module, opt, sched, micro, n_targets, world_size=world_size)
            acc = captured if acc is None else {k: acc[k] + captured[k] for k in acc}
        return {k: v / world_size for k, v in acc.items()} if world_size > 1 else acc

    whole = grads_of([[exs]])
    accumulated = grads_of([[exs[:2], exs[2:]]])
    ddp = grads_of([[exs[0::2]], [exs[1::2]]], world_size=2)   # what DDP's averaging computes
    for k in whole:
        torch.testing.assert_close(accumulated[k], whole[k], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(ddp[k], whole[k], rtol=1e-4, atol=1e-7)


def test_cli_maps_every_flag_to_the_config(monkeypatch, capsys):
    seen = {}

    def fake_train(config, **kw):
        seen.update(config=config, **kw)
        return {"_path": "results/x.json"}

    monkeypatch.setattr(train, "train", fake_train)
    rc = train.main(["--task", "fpb,fiqa", "--precision", "nf4", "--rank", "4", "--lr", "0.0005", "--max-steps", "7",
                     "--lora-variant", "rslora", "--grad-checkpointing", "on", "--label-only-logits", "false",
                     "--force", "--results-dir", "/tmp/r"])
    cfg = seen["config"]
    assert rc == 0 and capsys.readouterr().out.strip() == "results/x.json"
    assert cfg.tasks == ("fpb", "fiqa") and cfg.precision == "nf4" and cfg.lora.rank == 4 and cfg.lr == 5e-4
    assert cfg.max_steps == 7 and cfg.lora.variant == "rslora" and cfg.grad_checkpointing == "on"
    assert cfg.label_only_logits is False and seen["force"] and seen["results_dir"] == "/tmp/r"
    assert train.main(["--lr", "-1"]) == 2
    assert "lr=-1.0: expected > 0" in capsys.readouterr().err

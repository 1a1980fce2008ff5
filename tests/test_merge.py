"""merge: adapter + unquantized base -> a plain transformers folder whose logits equal base + adapter."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from finlora_utils import merge, models
from finlora_utils.config import LoraSettings
from finlora_utils.paths import project_root

PROMPTS = ["Instruction: What is the sentiment?\nInput: Sales fell 10%.\nAnswer: ",
           "Instruction: What is the sentiment?\nInput: The company raised its dividend.\nAnswer: "]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A tiny-random-llama adapter with random (non-zero) B, so the merge has something to change."""
    from finlora_utils import lora

    model, _ = models.load_model(models.TINY, "fp32")
    pm = lora.apply_lora(model, LoraSettings(rank=4, alpha=8, targets="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    d = tmp_path_factory.mktemp("adapter")
    pm.save_pretrained(d)
    return d


def _logits(model, tok, text):
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_merged_model_loads_plainly_and_equals_base_plus_adapter(adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert merge.main([str(adapter), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = (out / "README.md").read_text()
    # the card travels with the model: the adapter by folder name and sha256, no absolute path (no user name)
    assert "base_model:" in card and "rank 4" in card and f"`{adapter.name}`" in card
    for text in (card, (out / "finlora_merge.json").read_text()):
        assert str(adapter.resolve().parent) not in text and str(project_root()) not in text
    rec = json.loads((out / "finlora_merge.json").read_text())
    assert rec["adapter"]["config"]["r"] == 4 and rec["check"]["probe_max_abs_logit_diff"] < 1e-3
    # readable by others as any file the umask allows (mkdtemp and safetensors alone make it owner-only)
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777, (out / "model.safetensors").stat().st_mode & 0o777) == \
        (0o777 & ~mask, 0o666 & ~mask)

    merged = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    base, _ = models.load_model(models.TINY, "fp32")
    plain = {t: _logits(base, tok, t) for t in PROMPTS}
    ref = PeftModel.from_pretrained(base, str(adapter))
    for t in PROMPTS:
        want = _logits(ref, tok, t)
        assert torch.allclose(_logits(merged, tok, t), want, atol=1e-4, rtol=1e-4)
        assert (want - plain[t]).abs().max() > 1e-2   # the adapter changed the model


def test_merge_refuses_a_quantized_base_and_bad_paths(adapter, tmp_path, capsys):
    qbase = tmp_path / "q"
    shutil.copytree(models.tiny_model_dir(), qbase)
    cfg = json.loads((qbase / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (qbase / "config.json").write_text(json.dumps(cfg))
    assert merge.main([str(adapter), "--out", str(tmp_path / "m"), "--base", str(qbase)]) == 2
    assert "stored quantized (bitsandbytes, 4-bit)" in capsys.readouterr().err
    assert merge.main([str(adapter), "--out", str(tmp_path / "m"), "--tolerance", "-1"]) == 2
    assert "tolerance=-1.0: expected the largest |logit difference| to accept" in capsys.readouterr().err
    assert merge.main([str(tmp_path / "nope"), "--out", str(tmp_path / "m")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert merge.main([str(adapter), "--out", str(tmp_path / "full")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_an_adapter_without_safetensors_weights_is_refused_everywhere(adapter, tmp_path, capsys):
    """peft falls back to adapter_model.bin (a pickle, torch.load) when the safetensors file is missing; merge,
    predict and evaluate refuse such a folder, naming it, before any model loads."""
    from finlora_utils import evaluate, predict, results

    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")   # never read: refused first
    assert merge.main([str(pickled), "--out", str(tmp_path / "m")]) == 2
    assert f"{pickled}: no adapter_model.safetensors" in capsys.readouterr().err
    assert predict.main([str(pickled), "Sales fell.", "--model", "tiny-random-llama", "--task", "fpb"]) == 2
    err = capsys.readouterr().err
    assert f"{pickled}: no adapter_model.safetensors" in err and "adapter_model.bin (a pickle)" in err
    res = results.new_result("fpb_x_32bit_r4", {"model": "tiny-random-llama", "precision": "fp32", "tasks": ["fpb"]}, 0)
    res["train_info"] = {"adapter_path": str(pickled)}
    path = results.write_json(tmp_path / "results" / "fpb_x_32bit_r4.json", res)
    with pytest.raises(ValueError, match=f"{pickled}: no adapter_model.safetensors"):
        evaluate.evaluate_runs([path])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("trained_on, expected", [("embedded", "embedded"), (models.EMBEDDED_HUB_ID, "hub"),
                                                  (None, "embedded")])
def test_the_card_tells_the_embedded_copy_from_the_hub_model(adapter, tmp_path, trained_on, expected):
    """Both record SmolLM2's hub id in adapter_config.json (so plain peft loads either); the kit's card names the
    base it trained on, and merge loads that one (an adapter trained on the hub model was merged into the embedded,
    dequantized Q4_1 copy). A plain peft adapter without the card keeps the embedded reading."""
    from finlora_utils import artifacts
    from finlora_utils.config import TrainConfig

    d = tmp_path / "adapter"
    shutil.copytree(adapter, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=models.EMBEDDED_HUB_ID)))
    (d / "README.md").unlink(missing_ok=True)
    if trained_on:
        info = dict(loss_curve=[[1, 2.0]], steps=1, examples=4, target_tokens=8, truncated=0, wall_s=1.0,
                    peak_mem_bytes=2**20, peak_mem_method="VmHWM")
        card = artifacts.model_card(TrainConfig(model=trained_on, tasks="fpb"), info, models.EMBEDDED_HUB_ID)
        assert f"\n{artifacts.BASE_KEY}: {trained_on}\n" in card.split("\n---", 1)[0]
        (d / "README.md").write_text(card)
    want = models.EMBEDDED if expected == "embedded" else models.EMBEDDED_HUB_ID
    assert merge.adapter_base(d) == want
    if trained_on is None:   # peft recorded a cache folder: today's tagged one, or the untagged one of older kits
        for folder in ("data/cache/models/smollm2-135m-instruct", "/x/models/smollm2-135m-instruct-0a1b2c3d"):
            (d / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=folder)))
            assert merge.adapter_base(d) == models.EMBEDDED
        assert not models.is_embedded_cache_folder("/x/models/smollm2-135m-instruct-tokenizer-0a1b2c3d")


def test_adapter_config_names_the_base_a_colleague_can_load(tmp_path, monkeypatch):
    """peft records the loaded model's path: for the embedded model a cache folder of this machine. The kit
    names the hub id there (what plain peft elsewhere can load), and merge still reads it as the embedded copy.
    Saving asks the hub nothing (peft's default looks the hub id up: a network call and a warning offline)."""
    from peft.utils import save_and_load

    from finlora_utils import artifacts, lora

    def no_lookup(*args, **kwargs):
        raise AssertionError(f"save_adapter asked the hub: {args}")

    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", no_lookup)

    model, _ = models.load_model(models.TINY, "fp32")
    pm = lora.apply_lora(model, LoraSettings(rank=2, alpha=4))
    artifacts.save_adapter(pm, tmp_path / "a", "a card without the kit's front matter", models.EMBEDDED_HUB_ID)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == models.EMBEDDED_HUB_ID
    assert merge.adapter_base(tmp_path / "a") == models.EMBEDDED


def test_an_adapter_on_a_kit_test_model_names_that_model_not_its_cache_folder(adapter, tmp_path):
    """peft records the loaded folder (data/cache/models/tiny-random-llama-s0); merge recorded that path as the base's
    name, while the card said tiny-random-llama."""
    from finlora_utils import artifacts
    from finlora_utils.config import TrainConfig

    d = tmp_path / "adapter"
    shutil.copytree(adapter, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    folder = str(models.resolve_model_path(models.TINY))
    (d / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=folder)))
    info = dict(loss_curve=[[1, 2.0]], steps=1, examples=4, target_tokens=8, truncated=0, wall_s=1.0,
                peak_mem_bytes=2**20, peak_mem_method="VmHWM")
    (d / "README.md").write_text(artifacts.model_card(TrainConfig(model=models.TINY, tasks="fpb"), info, folder))
    assert merge.adapter_base(d) == models.TINY


def test_predict_on_an_adapter_folder_takes_the_base_its_card_names(adapter, tmp_path, monkeypatch):
    """predict ADAPTER_DIR without --model loaded the recorded hub id (a download, offline a failure) for an adapter
    the kit trained on the embedded copy; merge already read the card."""
    from finlora_utils import artifacts, predict
    from finlora_utils.config import TrainConfig

    d = tmp_path / "adapter"
    shutil.copytree(adapter, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps(dict(cfg, base_model_name_or_path=models.EMBEDDED_HUB_ID)))
    info = dict(loss_curve=[[1, 2.0]], steps=1, examples=4, target_tokens=8, truncated=0, wall_s=1.0,
                peak_mem_bytes=2**20, peak_mem_method="VmHWM")
    (d / "README.md").write_text(artifacts.model_card(TrainConfig(model="embedded", tasks="fpb"), info,
                                                      models.EMBEDDED_HUB_ID))
    loaded = []

    def stop(name, **kw):
        loaded.append(name)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(models, "load_model", stop)
    with pytest.raises(RuntimeError, match="stopped by the test"):
        predict.load(str(d), labels="up,down")
    assert loaded == [models.EMBEDDED]

import re

import pytest

from finlora_utils.config import (ConfigError, EvalConfig, LoraSettings, TrainConfig, load_preset,
                                  paper_settings, PRESETS)


@pytest.mark.parametrize("kwargs, param", [
    (dict(lr=0), "lr"), (dict(lr=-1e-4), "lr"), (dict(precision="int3"), "precision"),
    (dict(batch_size=0), "batch_size"), (dict(max_seq_len=8), "max_seq_len"), (dict(tasks=()), "tasks"),
    (dict(parallel="zero3"), "parallel"), (dict(grad_accum=0), "grad_accum"),
    (dict(grad_checkpointing="maybe"), "grad_checkpointing"), (dict(epochs=0, max_steps=0), "epochs"),
    (dict(train_split="test"), "train_split"), (dict(cpu_memory="quick"), "cpu_memory"),
    (dict(pipeline_split="compute"), "pipeline_split"), (dict(share_prefix="yes"), "share_prefix"),
    # wrong types, as a config file or grid brings them: named, not a TypeError from a comparison
    (dict(lr="abc"), "lr"), (dict(batch_size=4.5), "batch_size"), (dict(seed="0"), "seed"),
    (dict(model=5), "model"), (dict(tasks=5), "tasks"), (dict(lora=5), "lora"),
])
def test_train_config_rejects_bad_values_naming_the_parameter(kwargs, param):
    with pytest.raises(ConfigError, match=rf"^{param}="):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs, param", [
    (dict(rank=0), "rank"), (dict(rank=-4), "rank"), (dict(alpha=0), "alpha"),
    (dict(dropout=1.0), "dropout"), (dict(targets=""), "targets"), (dict(variant="vera"), "variant"),
    (dict(rank=4.0), "rank"), (dict(alpha="16"), "alpha"),
])
def test_lora_settings_rejects_bad_values(kwargs, param):
    with pytest.raises(ConfigError, match=rf"^{param}="):
        LoraSettings(**kwargs)


def test_int8_dora_refused_before_training():
    with pytest.raises(ConfigError, match="dora"):
        TrainConfig(precision="int8", lora=LoraSettings(variant="dora"))


def test_run_id_follows_the_schema():
    precision, lora = paper_settings(4)
    cfg = TrainConfig(tasks="fpb", precision=precision, lora=lora)
    assert cfg.run_id() == "fpb_smollm2-135m_4bit_r4"
    assert TrainConfig(tasks="fpb,fiqa", precision="bf16", lora=dict(rank=8, variant="rslora")).run_id() \
        == "fpb+fiqa_smollm2-135m_16bit_r8_rslora"
    assert TrainConfig(tasks="fpb", precision="nf4", lora=dict(rank=4), train_split="fit").run_id() \
        == "fpb_smollm2-135m_4bit_r4_fit"


def test_paper_settings_match_finlora():
    assert [(paper_settings(b)[0], paper_settings(b)[1].rank) for b in (16, 8, 4)] == \
        [("bf16", 8), ("int8", 8), ("nf4", 4)]
    with pytest.raises(ConfigError, match="^bits="):
        paper_settings(2)


def test_round_trip_through_dict_and_unknown_keys():
    cfg = TrainConfig(tasks=("fpb",), lora=LoraSettings(rank=8))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="^learning_rate: unknown"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_eval_config_validation():
    assert EvalConfig(tasks="fpb,tfns").tasks == ("fpb", "tfns")
    with pytest.raises(ConfigError, match="^mode="):
        EvalConfig(mode="parse")


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_are_flat(preset):
    params = load_preset(preset, "00_data")
    assert params["PRESET"] == preset and "MODEL" in params
    assert all(isinstance(v, (str, int, float, bool)) for v in params.values()), params
    with pytest.raises(ConfigError, match="^PRESET="):
        load_preset("huge")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_resolves_to_what_the_hardware_computes_natively(monkeypatch, native, expected):
    import torch

    from finlora_utils import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "default_compute_dtype", lambda: torch.bfloat16 if native else torch.float32)
    cfg = TrainConfig(precision="auto", lora=LoraSettings(rank=8))
    assert cfg.precision == expected and cfg.bits == (16 if native else 32)
    assert cfg.run_id().endswith(f"_{cfg.bits}bit_r8")   # the run id says what actually ran
    assert EvalConfig(precision="auto").precision == expected
    assert TrainConfig(precision="nf4").precision == "nf4"   # explicit precisions are kept


@pytest.mark.parametrize("cap, native", [(None, True), ("AVX2", False), ("avx512_core", False),
                                         ("AVX512_CORE_BF16", True), ("AVX10_1_512_AMX", True),
                                         (" AVX2", True)])   # oneDNN does not strip: no cap for it, none here
def test_an_isa_cap_below_bf16_makes_the_kit_compute_in_fp32(monkeypatch, cap, native):
    """ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU leaves oneDNN's bf16 matmul at ~1 GFLOP/s, as on an AVX2-only CPU:
    the kit then computes in fp32, as it would there, and every result records the cap."""
    import torch

    from finlora_utils import hardware, results

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_flag", lambda flag: flag == "avx512_bf16")
    for var in hardware.ISA_CAP_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.default_compute_dtype() == (torch.bfloat16 if native else torch.float32)
    assert results.environment()["hardware"]["isa_caps"] == ({"ONEDNN_MAX_CPU_ISA": cap} if cap else {})
    assert hardware.caps_text() == (f", ONEDNN_MAX_CPU_ISA={cap}" if cap else "")   # what printed lines append
    monkeypatch.setattr(hardware, "cpu_flag", lambda flag: False)   # an AVX2 CPU: no cap makes bf16 native
    assert hardware.default_compute_dtype() == torch.float32


def test_precision_is_one_value_that_every_consumer_reads():
    """Bits, planner bits and labels come from config.PRECISION: fp32 is a 32-bit run id but a 16-bit plan with
    4-byte tensors (pipeline.stage_split once passed 32 to the planner, which raised, and fell back to even)."""
    from finlora_utils import config, memory, models, results

    assert config.precision_info("fp32").bits == 32 and config.precision_info("fp32").planner_bits == 16
    assert config.precision_info("fp32").planner_kwargs == {"compute_bytes": 4, "base_bytes": 4}
    assert [config.precision_info(p).label for p in ("bf16", "int8", "nf4", "fp4")] == ["16-bit", "8-bit", "4-bit", "4-bit"]
    assert models.QUANTIZED == ("int8", "nf4", "fp4") and models.PRECISIONS == config.PRECISIONS
    assert results.base_run_id("fpb", "embedded", "fp32") == "fpb_smollm2-135m_32bit_base"
    fp32 = memory.run_plan({"model": "smollm2-135m", "precision": "fp32", "lora": {"rank": 8}},
                           {"seq_len": 64, "batch": 1, "device": "cpu"})
    bf16 = memory.run_plan({"model": "smollm2-135m", "precision": "bf16", "lora": {"rank": 8}},
                           {"seq_len": 64, "batch": 1, "device": "cpu"})
    assert fp32.bits == bf16.bits == 16 and fp32.breakdown["quantized_weights"] == 2 * bf16.breakdown["quantized_weights"]
    with pytest.raises(ConfigError, match=r"precision='auto'.*resolved first"):
        config.precision_info("auto")


def test_a_run_stored_before_a_field_existed_counts_as_the_code_of_its_day():
    """share_prefix came after runs were stored without it: those ran padded batches, so a stored config
    without the field differs from today's default (no silent resume into another computation)."""
    from finlora_utils.artifacts import as_stored, differences

    now = as_stored(TrainConfig())
    old = {k: v for k, v in now.items() if k != "share_prefix"}
    assert differences(old, now) == ["share_prefix"]
    assert differences(old, as_stored(TrainConfig(share_prefix=False))) == []
    assert differences(now, as_stored(TrainConfig(log_every=3))) == []   # cosmetic fields never differ


def test_numbers_and_paths_of_the_right_kind_are_taken_as_plain_values(tmp_path):
    import numpy as np

    cfg = TrainConfig(batch_size=np.int64(4), epochs=np.float32(2), lr=1, output_dir=tmp_path,
                      lora={"rank": np.int32(8)})
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.output_dir, cfg.lora.rank) == (4, 2.0, 1, str(tmp_path), 8)
    assert type(cfg.batch_size) is int and type(cfg.epochs) is float and type(cfg.lora.rank) is int


@pytest.mark.parametrize("content, message", [
    ('{"model": "tiny-random-llama", ', r"bad.json:1: not valid JSON \(.*\); expected an object"),
    ("[1, 2]", r"bad.json: a JSON list, expected an object of TrainConfig fields"),
    ('{"lora": 5}', r"bad.json: lora=5: expected an object of LoraSettings fields"),
    ('{"lora": {"rankk": 4}}', r"lora.rankk: unknown LoraSettings parameter"),
    ('{"lr": "abc"}', r"lr='abc': expected a number"),
    ('{"colour": "red"}', r"colour: unknown TrainConfig parameter"),
])
def test_a_bad_config_file_is_named_without_a_traceback(tmp_path, capsys, content, message):
    from finlora_utils import train

    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert train.main(["--config", str(bad), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(message, err), err


def test_more_processes_need_a_parallel_mode():
    """--nproc 4 without --parallel trained one process and recorded nproc 4 beside world_size 1."""
    with pytest.raises(ConfigError, match=r"^nproc=4: expected 1 with parallel='none'; more processes train under "
                                          r"torchrun: `python -m finlora_utils parallel --parallel ddp\|pipeline"):
        TrainConfig(tasks="fpb", nproc=4)
    assert TrainConfig(tasks="fpb", nproc=4, parallel="ddp").nproc == 4


def test_a_missing_config_file_is_named_with_what_is_expected(tmp_path):
    from finlora_utils.config import read_config_file

    with pytest.raises(ConfigError, match=r"^config='.*nope\.json': no such file; expected a JSON object of TrainConfig"):
        read_config_file(tmp_path / "nope.json")


@pytest.mark.parametrize("kw,message", [
    (dict(variant_tag="a/b"), r"^variant_tag='a/b': expected letters, digits and \. _ \+ -"),
    (dict(tasks="fpb,fpb"), r"^tasks='fpb,fpb': expected each task once"),
    (dict(lr=float("inf")), r"^lr=inf: expected > 0 and finite"),
    (dict(lora={"targets": 5}), r"^targets=5: expected module names"),
])
def test_settings_that_used_to_pass_and_misbehave_later(kw, message):
    """A '/' in variant_tag wrote results into a subfolder no report reads; a repeated task trained every row twice;
    lr=inf finished with a nan loss as a normal run; targets=5 was a bare TypeError."""
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"tasks": "fpb", **kw})


@pytest.mark.parametrize("kw,message", [(dict(tasks=3), r"^tasks=3: expected task names"),
                                        (dict(batch_size=2.5), r"^batch_size=2\.5: expected an integer"),
                                        (dict(max_test_samples="5"), r"^max_test_samples='5': expected an integer")])
def test_eval_config_checks_types_as_train_config_does(kw, message):
    """A grid's MAX_TEST_SAMPLES: "5" failed in notebook 05's cell 4 with a TypeError; batch_size=2.5 passed."""
    with pytest.raises(ConfigError, match=message):
        EvalConfig(**kw)


def test_a_notebooks_number_list_names_the_item_that_is_not_a_number():
    """02's RANKS='a' was a bare 'invalid literal for int()' traceback."""
    from finlora_utils.config import number_list

    assert number_list("RANKS", "4, 8,16") == [4, 8, 16] and number_list("RANKS", 8) == [8]
    assert number_list("GPU_SIZES", "24,48.5", float) == [24.0, 48.5]
    with pytest.raises(ConfigError, match=r"^RANKS='4,a': 'a' is not an integer; expected comma-separated integers"):
        number_list("RANKS", "4,a")
    with pytest.raises(ConfigError, match=r"^RANKS='4,8.5': '8.5' is not an integer"):
        number_list("RANKS", "4,8.5")
    with pytest.raises(ConfigError, match=r"^RANKS='': expected at least one integer"):
        number_list("RANKS", "")
    assert number_list("SWEEP_SEQ_LENS", "", empty=True) == [] and number_list("SWEEP_SEQ_LENS", 512) == [512]

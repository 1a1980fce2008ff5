"""Every bad input gets `error: ...` and exit status 2, never a traceback (issue 18)."""
import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from finlora_utils import artifacts, evaluate, memory, parallel, results, study, sweep, train
from finlora_utils.__main__ import VERBS
from finlora_utils.__main__ import main as entry_main
from finlora_utils.config import ConfigError, LoraSettings, TrainConfig, config_from_args
from finlora_utils.data import __main__ as data_cli


def _fails_cleanly(capsys, main, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_missing_model_folder(capsys, tmp_path):
    args = ["--model", "/nonexistent/dir", "--task", "fpb", "--output-dir", str(tmp_path / "runs")]
    _fails_cleanly(capsys, train.main, args, "/nonexistent/dir", "no such folder", "embedded")
    _fails_cleanly(capsys, parallel.main, args + ["--nproc", "2", "--parallel", "ddp"], "no such folder")
    _fails_cleanly(capsys, memory.main, ["estimate", "--model", "/nonexistent/dir"], "/nonexistent/dir")


def test_module_entry_point_prints_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "finlora_utils.train", "--model", str(tmp_path / "nope"),
                        "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: ") and "Traceback" not in p.stderr, p.stderr


def test_results_folder_that_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "reports"
    blocker.write_text("not a folder")
    _fails_cleanly(capsys, train.main, ["--model", "tiny-random-llama", "--task", "fpb", "--results-dir",
                                        str(blocker / "results"), "--output-dir", str(tmp_path / "runs")],
                   f"{blocker}: is a file")
    _fails_cleanly(capsys, study.main, ["all", "--preset", "smoke", "--output-dir", str(blocker)], "is a file")
    with pytest.raises(results.ResultsError, match="is a file"):
        results.write_json(blocker / "x.json", {})


def test_unknown_notebook_and_data_inputs(capsys, tmp_path):
    _fails_cleanly(capsys, study.main, ["all", "--preset", "smoke", "--notebooks", "00_dta",
                                        "--output-dir", str(tmp_path)], "00_dta", "available: 00_data")
    _fails_cleanly(capsys, data_cli.main, ["fetch", "nosuch"], "unknown task 'nosuch'")


def _grid(tmp_path, **over):
    g = {"name": "t", "preset": "smoke", "notebooks": ["03_finetune", "05_evaluation"],
         "params": {"TASKS": "fpb"}, "grid": {"SEED": [0]}, **over}
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(g))
    return p


def test_grid_rejects_unknown_keys_and_parameter_names(capsys, tmp_path):
    _fails_cleanly(capsys, sweep.main, [str(_grid(tmp_path, gird={}))], "unknown key 'gird'")
    # papermill would only log "Passed unknown parameter" and run on with the default
    _fails_cleanly(capsys, sweep.main, [str(_grid(tmp_path, grid={"LRR": [1e-3]}))],
                   "grid: 'LRR' is not a parameter of 03_finetune, 05_evaluation", "did you mean 'LR'?")
    _fails_cleanly(capsys, sweep.main, [str(_grid(tmp_path, params={"MAX_TEST_SAMPLE": 4}))],
                   "params:", "did you mean 'MAX_TEST_SAMPLES'?")
    _fails_cleanly(capsys, sweep.main, [str(_grid(tmp_path, include=[{"SEED": 1, "notebooks": ["05_evaluation"],
                                                                     "CONFIGS": "nf4:4"}]))],
                   "include[0]: 'CONFIGS' is not a parameter of 05_evaluation")
    _fails_cleanly(capsys, sweep.main, [str(_grid(tmp_path, notebooks=["03_finetun"]))], "no such notebook")
    assert sweep.load_grid(_grid(tmp_path, grid={"LR": [1e-3], "COMPARE_GENERATE": [False]}))["grid"]


def test_notebook_parameters_are_checked_before_anything_runs(tmp_path):
    assert {"PRESET", "SEED", "OUTPUT_DIR", "LR", "SAVE_EVERY"} <= set(study.notebook_parameters("03_finetune"))
    with pytest.raises(ConfigError, match=r"'EPOCH' is not a parameter of 03_finetune \(did you mean 'EPOCHS'\?\)"):
        study.run_notebook("03_finetune", "smoke", tmp_path, extra_params={"EPOCH": 2})
    assert not (tmp_path / "executed" / "03_finetune.ipynb").exists()


def test_missing_adapter_folder_is_named_not_dropped(tmp_path):
    res = results.new_result("fpb_x_4bit_r4", {"model": "tiny-random-llama", "precision": "nf4"}, 0, "smoke", "real")
    res["train_info"] = {"adapter_path": str(tmp_path / "gone" / "adapter")}
    path = results.write_json(tmp_path / "results" / "fpb_x_4bit_r4.json", res)
    with pytest.warns(UserWarning, match="adapter_path .*gone/adapter: no such folder"):
        assert evaluate.discover_runs(tmp_path / "results") == []
    with pytest.raises(evaluate.EvalError, match=f"{path}: train_info.adapter_path .*: no such folder"):
        evaluate.evaluate_runs([path])


def _hold_lock(folder, what):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from finlora_utils import results
        with results.folder_lock({str(folder)!r}, {what!r}):
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_writer_of_a_folder_is_refused_at_once(tmp_path):
    cfg = TrainConfig(model="tiny-random-llama", tasks=("fpb",), output_dir=str(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / cfg.run_id()
    holder = _hold_lock(run_dir, "training elsewhere")
    try:
        with pytest.raises(results.FolderBusy, match=rf"another process \(pid {holder.pid}: training elsewhere\)"):
            train.train(cfg, results_dir=tmp_path / "results")
        assert not (tmp_path / "results").exists() and list(run_dir.iterdir()) == [run_dir / ".lock"]
    finally:
        holder.kill()
        holder.wait()
    # the OS dropped the killed holder's lock: a crash leaves nothing stale behind
    with results.folder_lock(run_dir, "after a crash"):
        assert (run_dir / ".lock").read_text().startswith("pid ")


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = TrainConfig(model="tiny-random-llama", tasks=("fpb",), precision="fp32", lora=LoraSettings(rank=4),
                      max_steps=4, batch_size=2, max_train_samples=8, max_seq_len=96, save_every=1,
                      output_dir=str(tmp_path / "runs"))

    class Crash(Exception):
        pass

    def crash_at_3(step, loss):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train.train(cfg, results_dir=tmp_path / "results", on_step=crash_at_3)
    ckpts = tmp_path / "runs" / cfg.run_id() / artifacts.CKPT_DIR
    # a checkpoint after steps 1, 2 and 3 (saved before the crash at 3); the newest two are kept
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000002", "step-000003"]
    newest = ckpts / "step-000003" / "adapter.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])   # a copy cut short, a disk that filled up
    with pytest.warns(UserWarning, match=re.escape(f"{newest}: unreadable")):
        res = train.train(cfg, results_dir=tmp_path / "results")
    assert res["train_info"]["resumed_from_step"] == 2 and res["train_info"]["steps"] == 4

    with pytest.raises(Crash):
        train.train(cfg, results_dir=tmp_path / "results2", force=True, on_step=crash_at_3)
    for d in ckpts.glob("step-*"):
        (d / "state.json").write_text('{"step": 1, "optim')
    with pytest.raises(artifacts.CheckpointError, match=r"state\.json: unreadable .*Delete"):
        train.train(cfg, results_dir=tmp_path / "results2")
    err = subprocess.run([sys.executable, "-m", "finlora_utils.train", "--config", _cfg_file(tmp_path, cfg),
                          "--results-dir", str(tmp_path / "results2")], capture_output=True, text=True, timeout=600)
    assert err.returncode == 2 and "error: cannot resume from" in err.stderr, err.stderr
    assert "Traceback" not in err.stderr


def _cfg_file(tmp_path, cfg) -> str:
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(artifacts.as_stored(cfg)))
    return str(p)


def test_a_missing_predict_source_is_named(capsys, tmp_path):
    from finlora_utils import predict

    _fails_cleanly(capsys, predict.main, [str(tmp_path / "no-such-adapter"), "shares fell"],
                   "no-such-adapter", "no such file or folder")


def test_every_module_with_a_main_runs_as_a_module(tmp_path):
    """`python -m finlora_utils.evaluate` once exited 0 doing nothing (no __main__ guard)."""
    p = subprocess.run([sys.executable, "-m", "finlora_utils.evaluate", str(tmp_path / "none.json")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "results file not found" in p.stderr, p.stderr


def test_evaluate_names_a_mistyped_or_untrained_task_before_loading_a_model(tmp_path, capsys, monkeypatch):
    res = results.new_result("fpb_x_32bit_r4", {"model": "tiny-random-llama", "precision": "fp32", "tasks": ["fpb"]}, 0)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text("{}")   # never read: the tasks are refused first
    res["train_info"] = {"adapter_path": str(adapter)}
    path = results.write_json(tmp_path / "results" / "fpb_x_32bit_r4.json", res)
    monkeypatch.setattr(evaluate, "_load", lambda *a: pytest.fail("a model was loaded"))
    assert evaluate.main(["--base", "tiny-random-llama", "--tasks", "fpb", "--modes", "scor"]) == 2
    assert "error: modes='scor': expected a comma-separated list from" in capsys.readouterr().err
    assert evaluate.main([str(path), "--tasks", "fbp"]) == 2
    assert "error: tasks: unknown task 'fbp'" in capsys.readouterr().err
    assert evaluate.main([str(path), "--tasks", "fiqa"]) == 2   # a real task, but not this run's
    err = capsys.readouterr().err
    assert "tasks='fiqa': not a training task of fpb_x_32bit_r4 (trained on fpb)" in err and "--any-task" in err


@pytest.mark.parametrize("content, message", [
    ("[1]", "c.json: a JSON list, expected a model's config.json"),
    ('{"model_type": "llama", ', "c.json:1: not valid JSON"),
    ('{"model_type": "llama", "num_attention_heads": 4, "hidden_size": 64, "intermediate_size": 128}',
     "num_hidden_layers / n_layer=None: expected the model's number of decoder layers"),
])
def test_estimate_names_what_is_wrong_with_a_config_file(tmp_path, capsys, content, message):
    (tmp_path / "c.json").write_text(content)
    assert memory.main(["estimate", "--model", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_arch_names_a_config_transformers_cannot_build(tmp_path, capsys):
    from finlora_utils import arch

    (tmp_path / "c.json").write_text('{"model_type": "llama", "hidden_size": "big"}')
    assert arch.main([str(tmp_path / "c.json")]) == 2
    assert "transformers cannot build a causal LM from this config" in capsys.readouterr().err
    (tmp_path / "c.json").write_text("[1]")
    assert arch.main([str(tmp_path / "c.json")]) == 2
    assert "a JSON list, expected a model's config.json" in capsys.readouterr().err


def test_a_bad_cell_timeout_or_an_output_folder_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    from finlora_utils import predict

    monkeypatch.setenv("FINLORA_CELL_TIMEOUT", "abc")
    with pytest.raises(ConfigError, match=r"^FINLORA_CELL_TIMEOUT='abc': expected seconds per notebook cell"):
        study.run_notebook("06_report", "smoke", tmp_path)
    monkeypatch.setattr(predict, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert predict.main(["embedded", "Sales fell.", "--task", "fpb", "--out", str(tmp_path)]) == 2
    assert f"out={str(tmp_path)!r}: is a folder" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    """A user's Ctrl-C in a long train printed a 111-line KeyboardInterrupt traceback."""
    from finlora_utils.errors import cli_entry

    @cli_entry
    def main(argv=None):
        raise KeyboardInterrupt

    assert main([]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted (Ctrl-C)") and "resumes from its last checkpoint" in err and "Traceback" not in err


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_verbs_help_shows_the_command_the_readme_teaches(verb, capsys):
    """`python -m finlora_utils train --help` said `usage: python -m finlora_utils.train`: a working command, but
    not the one the user typed or the README shows."""
    with pytest.raises(SystemExit) as done:
        entry_main([verb, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m finlora_utils {verb} "), verb


def test_a_parallel_config_outside_torchrun_is_refused_not_trained_as_one_process(capsys, tmp_path, monkeypatch):
    """`train --parallel ddp --nproc 2` used to train one plain process whose results said ddp."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = ["--model", "tiny-random-llama", "--task", "fpb", "--output-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), "--parallel", "ddp", "--nproc", "2", "--rank", "4"]
    _fails_cleanly(capsys, train.main, args, "parallel='ddp'", "python -m finlora_utils parallel --parallel ddp "
                   "--nproc 2", "parallel.launch(config)")
    with pytest.raises(ConfigError, match="parallel='pipeline'"):
        train.train(TrainConfig(model="tiny-random-llama", tasks="fpb", parallel="pipeline", nproc=2,
                                output_dir=str(tmp_path / "runs")), results_dir=tmp_path / "results", log=None)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    # ... and the command it names takes the same flags (the short LoRA aliases, --data-dir too)
    ns = parallel._parser().parse_args(args + ["--data-dir", str(tmp_path)])
    cfg = config_from_args(ns)
    assert (cfg.parallel, cfg.nproc, cfg.lora.rank, ns.data_dir) == ("ddp", 2, 4, str(tmp_path))


def test_parallel_names_a_bad_task_or_data_file_before_torchrun_starts(capsys, tmp_path, monkeypatch):
    """It used to start torchrun and print each rank's traceback (115-141 lines) around the one-line cause."""
    monkeypatch.setattr(parallel, "_run_bounded", lambda *a, **k: pytest.fail("torchrun must not start"))
    base = ["--parallel", "ddp", "--nproc", "2", "--model", "tiny-random-llama", "--max-steps", "2",
            "--output-dir", str(tmp_path / "runs")]
    _fails_cleanly(capsys, parallel.main, base + ["--task", "fbp"], "tasks='fbp': unknown task (did you mean 'fpb'?)")
    _fails_cleanly(capsys, parallel.main, base + ["--train-file", str(tmp_path / "nope.csv")], "nope.csv", "no such file")


def test_an_adapter_from_another_base_is_named_not_a_state_dict_traceback(capsys, tmp_path):
    """merge / predict with --base of another shape printed torch's size-mismatch traceback, one line per tensor."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    from finlora_utils import artifacts, merge
    from finlora_utils.models import load_model

    model, _ = load_model("tiny-random-llama", "fp32")
    adir = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(adir)
    weights = adir / "adapter_model.safetensors"   # as if trained on a base 8 wider than this one
    save_file({k: torch.zeros(v.shape[0], v.shape[1] + 8) if "lora_A" in k else v
               for k, v in load_file(weights).items()}, str(weights))
    base, _ = load_model("tiny-random-llama", "fp32")
    with pytest.raises(artifacts.AdapterError, match=r"adapter: trained on .*does not fit the base model "
                                                      r"'tiny-random-llama' \(size mismatch for .*lora_A"):
        artifacts.attach_adapter(base, adir, "tiny-random-llama")
    err = _fails_cleanly(capsys, merge.main, [str(adir), "--out", str(tmp_path / "m"), "--base", "tiny-random-llama"],
                         "does not fit the base model 'tiny-random-llama'")
    assert err.count("size mismatch") == 1   # the first mismatch, not one line per tensor
    (adir / "README.md").write_text("---\nfinlora_base: tiny-random-llama\n---\n")   # the card names this base
    with pytest.raises(artifacts.AdapterError, match=r"its weights do not fit 'tiny-random-llama' as that model is "
                                                      r"now \(size mismatch"):
        artifacts.attach_adapter(base, adir, "tiny-random-llama")


def test_predict_refuses_a_label_given_twice(capsys):
    """--labels approve,approve collapsed to one label and printed 0.5 as its probability."""
    from finlora_utils import predict

    _fails_cleanly(capsys, predict.main, ["tiny-random-llama", "Loan approved.", "--labels", "approve,approve,reject"],
                   "approve given more than once; expected distinct labels")


@pytest.mark.parametrize("flags,message", [
    (["--parallel", "pipeline", "--gpus", "1"], "--parallel pipeline: expected --gpus >= 2"),
    (["--schedule", "1f1b"], "--schedule 1f1b: expected --parallel pipeline"),
    (["--micro-batches", "4"], "--micro-batches 4: expected --parallel pipeline"),
    (["--zero1"], "--zero1: expected --gpus >= 2 under DDP"),
    (["--zero1", "--parallel", "ddp"], "--zero1: expected --gpus >= 2 under DDP"),   # one rank: nothing to shard
    (["--double-quant", "--bits", "16"], "--double-quant: expected --bits 4"),
])
def test_estimate_names_a_flag_its_plan_would_not_use(flags, message, capsys):
    """Each of these printed the plain plan as if the flag had been applied."""
    _fails_cleanly(capsys, memory.main, ["estimate", *flags], message)


def test_estimate_says_what_the_kits_own_training_needs_beside_the_papers_recipe(capsys):
    args = ["estimate", "--model", "llama-3.1-8b", "--seq-len", "4096", "--batch", "4", "--grad-checkpointing"]
    assert memory.main(args) == 0
    full = capsys.readouterr().out
    assert memory.main(args + ["--label-only-logits"]) == 0
    kit = capsys.readouterr().out
    kit_total = float(re.search(r"total per device\s+([\d.]+) GiB", kit).group(1))
    assert f"label positions only: {kit_total:.3f} GiB per device with --label-only-logits" in full
    assert float(re.search(r"total per device\s+([\d.]+) GiB", full).group(1)) > kit_total
    assert "label positions only" not in kit


def test_evaluate_names_its_sample_and_batch_flags_in_their_own_terms(capsys):
    """--max-samples -1 said 'max_samples=-1: must be >= 1 or None' where --help says 0 means all."""
    _fails_cleanly(capsys, evaluate.main, ["--base", "tiny-random-llama", "--tasks", "fpb", "--max-samples", "-1"],
                   "--max-samples=-1: expected >= 0 (0: every test example)")
    _fails_cleanly(capsys, evaluate.main, ["--base", "tiny-random-llama", "--task", "fpb", "--batch-size", "0"],
                   "--batch-size=0: expected >= 1")


def test_a_warning_on_the_command_line_is_its_message_without_the_kits_source_line(tmp_path):
    """A test file repeating training rows printed '.../data/files.py:194: UserWarning: ...' and the source line."""
    train = tmp_path / "rep_train.csv"
    train.write_text("text,label\n" + "".join(f"row {i},{('a', 'b')[i % 2]}\n" for i in range(20)))
    test = tmp_path / "rep_test.csv"
    test.write_text("text,label\nrow 1,b\nnew row,a\n")
    run = subprocess.run([sys.executable, "-m", "finlora_utils", "evaluate", "--base", "tiny-random-llama",
                          "--train-file", str(train), "--test-file", str(test), "--results-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "warning: test_file=" in run.stderr and "UserWarning" not in run.stderr, run.stderr

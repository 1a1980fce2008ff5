"""Task registry, prompt helpers, builders and loaders (finlora_utils.data)."""
from __future__ import annotations

import collections
import json
import warnings

import pytest

from finlora_utils import data
from finlora_utils.data import builders, loader, sources
from finlora_utils.data.tasks import NER_TEMPLATES

REQUIRED = ("fpb", "fiqa", "tfns", "nwgi", "headline", "ner", "xbrl_term", "finer", "fnxl", "xbrl_tags",
            "xbrl_value", "xbrl_formula", "formula", "financebench", "tfns_finlora_labels")
BOTH_SPLITS = [n for n, t in data.TASKS.items() if t.has_train]


def _jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No real data anywhere: no data dir, empty cache, downloads off, sample set in tmp."""
    monkeypatch.delenv("FINLORA_DATA_DIR", raising=False)
    monkeypatch.delenv("FINLORA_DOWNLOAD_BASE", raising=False)
    monkeypatch.setenv("FINLORA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FINLORA_SAMPLE_DIR", str(tmp_path / "sample"))
    monkeypatch.setenv("FINLORA_OFFLINE", "1")
    monkeypatch.setattr(loader, "_WARNED", set())
    return tmp_path


# --- registry and prompt helpers --------------------------------------------------------------------------

def test_registry_has_every_task_with_consistent_fields():
    assert set(REQUIRED) <= set(data.TASKS)
    for name, t in data.TASKS.items():
        assert t.name == name and t.kind in data.KINDS and t.metric in data.METRICS
        assert (t.labels is not None) == (t.kind == "classification")
        assert t.instruction and t.test_file and t.description
    assert data.get_task("fpb").labels == ("negative", "neutral", "positive")
    assert data.get_task("ner").labels == ("person", "organization", "location")
    assert data.get_task("headline").labels == ("Yes", "No")
    assert len(data.get_task("nwgi").labels) == 7
    assert not data.get_task("nwgi").has_train
    with pytest.raises(Exception):
        data.get_task("fpb").name = "x"  # frozen


def test_get_task_unknown_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'fbp'.*fpb, fiqa"):
        data.get_task("fbp")


def test_task_names_by_kind_and_variants():
    assert data.task_names()[:4] == ["fpb", "fiqa", "tfns", "nwgi"]
    assert "tfns_finlora_labels" not in data.task_names()
    assert "tfns_finlora_labels" in data.task_names(include_variants=True)
    assert set(data.task_names("extraction")) == {"finer", "fnxl", "xbrl_tags", "xbrl_value", "xbrl_formula"}
    assert set(data.task_names("generation")) == {"xbrl_term", "formula", "financebench"}
    with pytest.raises(ValueError, match="kind="):
        data.task_names("regression")


@pytest.mark.parametrize("instruction, text", [
    ("What is the sentiment of this news?", "Profit rose ."),
    ("Q?\nOptions: a, b", "line one\nline two"), ("I", ""),
])
def test_format_and_split_prompt_are_inverse(instruction, text):
    ctx = data.format_prompt(instruction, text)
    assert ctx == f"Instruction: {instruction}\nInput: {text}\nAnswer: "
    assert data.split_prompt(ctx) == (instruction, text)


def test_split_prompt_without_input_line_and_native_prompt():
    assert data.split_prompt("Instruction: Say hi.\nAnswer: ") == ("Say hi.", "")
    with pytest.raises(ValueError, match="not in FinLoRA's"):
        data.split_prompt("Explain this XBRL term briefly in one sentence: Assets. Answer:")


def test_normalize_label_and_nwgi_fold():
    assert data.normalize_label("fpb", " Positive. ") == "positive"
    assert data.normalize_label("nwgi", "Strong  NEGATIVE") == "strong negative"
    assert data.normalize_label("headline", "yes") == "Yes"
    assert data.normalize_label("fpb", "bullish") is None
    assert data.normalize_label("xbrl_term", "anything") is None
    assert [data.nwgi_to_3class(x) for x in data.NWGI_LABELS] == ["negative"] * 3 + ["neutral"] + ["positive"] * 3
    with pytest.raises(ValueError, match="not an NWGI label"):
        data.nwgi_to_3class("bullish")


# --- builders on tiny hand-made inputs (no real data needed) -------------------------------------------------

def test_tfns_label_mapping_is_the_datasets_own(tmp_path):
    """0 = Bearish -> negative, 1 = Bullish -> positive, 2 = Neutral. FinLoRA maps 1/2 the other way round."""
    assert builders.TFNS_LABELS == {0: "negative", 1: "positive", 2: "neutral"}
    p = tmp_path / "t.csv"
    p.write_text('text,label\nshares sink,0\n"shares soar, again",1\nmeeting today,2\n', encoding="utf-8")
    rows = builders.build_tfns(p)
    assert [r["target"] for r in rows] == ["negative", "positive", "neutral"]
    assert data.split_prompt(rows[1]["context"])[1] == "shares soar, again"
    assert [r["target"] for r in builders.build_tfns(p, builders.TFNS_FINLORA_LABELS)] == \
        ["negative", "neutral", "positive"]


def test_fiqa_thresholds():
    assert [builders.fiqa_label(s) for s in (-0.5, -0.1, 0.0, 0.099, 0.1, 0.7)] == \
        ["negative", "neutral", "neutral", "neutral", "positive", "positive"]


def test_ner_train_builder_one_row_per_entity(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("-DOCSTART- -X- O O\n\nJohn NNP - I-PER\nSmith NNP - I-PER\njoined VBD - O\nAcme NNP - I-ORG\n"
                 "in IN - O\nParis NNP - I-LOC\n, , - O\nJohn NNP - I-PER\nSmith NNP - I-PER\n\n"
                 "Nothing NN - O\n", encoding="utf-8")
    rows = builders.build_ner_train(p)
    got = [(data.split_prompt(r["context"])[0].split("'")[1], r["target"]) for r in rows]
    assert got == [("John Smith", "person"), ("Acme", "organization"), ("Paris", "location")]
    for r in rows:
        instr, text = data.split_prompt(r["context"])
        assert text == "John Smith joined Acme in Paris , John Smith"
        assert sorted(instr.split("\nOptions: ")[1].split(", ")) == sorted(data.get_task("ner").labels)


def test_subsample_is_seeded_stratified_and_deterministic():
    targets = ["a"] * 70 + ["b"] * 25 + ["c"] * 5
    idx = loader._subsample(targets, 20, seed=0, stratify=True)
    assert idx == loader._subsample(targets, 20, seed=0, stratify=True) == sorted(idx)
    assert collections.Counter(targets[i] for i in idx) == {"a": 14, "b": 5, "c": 1}
    assert idx != loader._subsample(targets, 20, seed=1, stratify=True)
    small = loader._subsample(["a"] * 98 + ["b", "c"], 3, seed=0, stratify=True)
    assert collections.Counter((["a"] * 98 + ["b", "c"])[i] for i in small) == {"a": 1, "b": 1, "c": 1}
    assert len(set(loader._subsample(targets, 30, seed=0, stratify=False))) == 30


# --- sample fallback ------------------------------------------------------------------------------------------

def test_sample_fallback_is_labelled_and_forbiddable(offline):
    with pytest.warns(UserWarning, match="SYNTHETIC sample"):
        ds = data.load_task("fpb", "test")
    assert set(ds.column_names) >= {"context", "target", "task", "source"}
    assert set(ds["source"]) == {"sample"} and data.data_source("fpb") == "sample"
    assert data.source_of(ds) == "sample"
    assert set(ds["target"]) <= set(data.get_task("fpb").labels)
    assert all(c.endswith("\nAnswer: ") for c in ds["context"])
    assert (offline / "sample" / "README.txt").read_text().startswith("SYNTHETIC")
    with pytest.raises(data.DataUnavailableError, match=r"fpb_test.jsonl.*allow_sample=False forbids"):
        data.load_task("fpb", "test", allow_sample=False)
    with pytest.raises(data.DataUnavailableError, match="'ner'.*FINLORA_DATA_DIR"):
        data.load_task("ner", "test")  # no sample set outside the default study's sentiment tasks
    with pytest.raises(data.NoSplitError, match="only a test split"):
        data.load_task("nwgi", "train")


def test_a_run_on_the_sample_set_records_the_sample_files_it_read(offline):
    from finlora_utils.data import sources
    from finlora_utils.data.hashes import file_hashes
    from finlora_utils.data.sample import SAMPLE_VERSION

    with pytest.warns(UserWarning, match="SYNTHETIC sample"):
        data.load_task("fpb", "fit")
    sample_train = sources.sample_dir() / "fpb_train.jsonl"
    want = {"fpb/Sentences_50Agree.txt": None,
            f"sample-v{SAMPLE_VERSION}/fpb_train.jsonl": sources.sha256_file(sample_train)}
    assert file_hashes(["fpb"], "fit") == want == file_hashes("fpb", "train")   # fit / validation: the train file
    assert list(file_hashes(["fpb"], "test")) == ["finlora/test/fpb_test.jsonl",
                                                  f"sample-v{SAMPLE_VERSION}/fpb_test.jsonl"]
    ner = file_hashes(["ner"], "test")   # no sample set for it: nothing was read instead
    assert ner and not any(ner.values()) and not any(k.startswith("sample-") for k in ner)


def test_runs_on_the_sample_set_say_so_in_their_progress_lines(offline, tmp_path, capsys):
    """The loader's warning scrolls away; the train header and each eval line must name synthetic data."""
    from finlora_utils import evaluate, models, train
    from finlora_utils.config import TrainConfig

    assert data.describe_source("real") == "real data" and data.describe_source("file") == "your files"
    assert data.describe_source("mixed").startswith("partly SYNTHETIC")
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.train(TrainConfig(model="tiny-random-llama", tasks="fpb", precision="fp32", max_train_samples=8,
                                batch_size=4, max_steps=1, output_dir=str(tmp_path / "runs")),
                    results_dir=tmp_path / "results", log=lines.append)
        model, tok = models.load_model("tiny-random-llama", "fp32")
        evaluate.evaluate_modes(model, tok, "fpb", max_samples=4)
    assert "8 examples of SYNTHETIC sample data, not FinLoRA results" in lines[0], lines[0]
    assert "4 examples of SYNTHETIC sample data" in capsys.readouterr().out
    evaluate.evaluate_modes(model, tok, [{"context": "x\nAnswer: ", "target": "neutral", "task": "fpb"}])
    assert "1 examples, accuracy" in capsys.readouterr().out   # no source column: nothing claimed


@pytest.mark.parametrize("name", ["fpb", "fiqa", "tfns"])
def test_sample_splits_do_not_overlap_and_subsample_deterministically(offline, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, test = data.load_task(name, "train"), data.load_task(name, "test")
        a = data.load_task(name, "train", max_samples=50, seed=3)
        b = data.load_task(name, "train", max_samples=50, seed=3)
    assert not set(train["context"]) & set(test["context"])
    assert len(a) == 50 and a["context"] == b["context"]
    assert set(a["target"]) == set(train["target"])


def test_load_tasks_mixes_and_shuffles_deterministically(offline):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mix = data.load_tasks(["fpb", "tfns"], "train", max_samples=40, seed=1)
        again = data.load_tasks(["fpb", "tfns"], "train", max_samples=40, seed=1)
    assert len(mix) == 80 and collections.Counter(mix["task"]) == {"fpb": 40, "tfns": 40}
    assert mix["context"] == again["context"]
    assert mix["task"][:40] != ["fpb"] * 40  # shuffled


def test_bad_arguments():
    with pytest.raises(ValueError, match="split="):
        data.load_task("fpb", "dev")
    with pytest.raises(ValueError, match="unknown task"):
        data.load_task("nope")
    with pytest.raises(data.NoSplitError, match="nwgi.*only a test split.*nwgi_test.jsonl"):
        data.load_task("nwgi", "train")


# --- real data: the builders reproduce FinLoRA's files ----------------------------------------------------------

@pytest.mark.real_data
def test_fpb_replay_reproduces_finlora_test(real_data_dir):
    """FinGPT's train_test_split(test_size=0.25, seed=42) over Sentences_50Agree in file order gives exactly
    FinLoRA's fpb_test.jsonl: same sentences, same order, same labels."""
    raw = real_data_dir / "fpb" / "Sentences_50Agree.txt"
    items = builders.read_fpb(raw)
    assert len(items) == 4846
    assert builders.build_fpb(raw, "test") == _jsonl(real_data_dir / "finlora/test/fpb_test.jsonl")
    train = data.load_task("fpb", "train", data_dir=real_data_dir, allow_sample=False)
    test = data.load_task("fpb", "test", data_dir=real_data_dir, allow_sample=False)
    assert len(test) == 1212 and len(train) == 3629
    train_idx, test_idx = builders.fpb_replay_split(raw)
    assert len(train_idx) == 3634 and sorted(train_idx + test_idx) == list(range(4846))
    # train = the exact text complement of the test split (the 5 train sentences duplicated in test dropped)
    test_text = {s for s, _ in (items[i] for i in test_idx)}
    assert [data.split_prompt(c)[1] for c in train["context"]] == \
        [items[i][0] for i in train_idx if items[i][0] not in test_text]


@pytest.mark.real_data
@pytest.mark.parametrize("task", ["fpb", "fiqa", "headline"])
def test_validation_is_a_fixed_stratified_tenth_of_train_and_fit_the_rest(real_data_dir, task):
    """Tuning happens on 'validation' (carved from train), never on test; training for it uses 'fit'."""
    load = lambda split: data.load_task(task, split, data_dir=real_data_dir, allow_sample=False)  # noqa: E731
    train, val, fit, test = load("train"), load("validation"), load("fit"), load("test")
    assert len(val) == round(len(train) * 0.1) and len(val) + len(fit) == len(train)
    pairs = lambda ds: collections.Counter(zip(ds["context"], ds["target"]))  # noqa: E731
    assert pairs(val) + pairs(fit) == pairs(train)
    assert not set(val["context"]) & set(test["context"])
    # stratified: every class's share within 1.5 points of train's
    full, held = collections.Counter(train["target"]), collections.Counter(val["target"])
    assert set(held) == set(full)
    assert all(abs(held[k] / len(val) - full[k] / len(train)) < 0.015 for k in full)
    assert load("validation")["context"] == val["context"]   # the same holdout every time


def test_validation_split_needs_a_train_split():
    with pytest.raises(data.NoSplitError, match="only a test split"):
        data.load_task("nwgi", "validation")


@pytest.mark.real_data
def test_tfns_test_is_rebuilt_from_sent_valid_with_correct_labels(real_data_dir):
    ours = data.load_task("tfns", "test", data_dir=real_data_dir, allow_sample=False)
    finlora = _jsonl(real_data_dir / "finlora/test/tfns_test.jsonl")
    assert ours["context"] == [r["context"] for r in finlora]  # identical prompts, same order
    pairs = collections.Counter(zip([r["target"] for r in finlora], ours["target"]))
    # FinLoRA's 1566 "positive" rows are label 2 = neutral; its 475 "neutral" rows are label 1 = bullish
    assert pairs == {("positive", "neutral"): 1566, ("neutral", "positive"): 475, ("negative", "negative"): 347}
    variant = data.load_task("tfns_finlora_labels", "test", data_dir=real_data_dir, allow_sample=False)
    assert variant["target"] == [r["target"] for r in finlora]


@pytest.mark.real_data
def test_tfns_train_mapping_pinned_on_real_rows(real_data_dir):
    raw = builders.read_tfns(real_data_dir / "tfns/sent_train.csv")
    train = data.load_task("tfns", "train", data_dir=real_data_dir, allow_sample=False)
    assert len(train) == len(raw) == 9543
    want = {0: "negative", 1: "positive", 2: "neutral"}
    assert train["target"] == [want[label] for _, label in raw]
    assert collections.Counter(train["target"]) == {"neutral": 6178, "positive": 1923, "negative": 1442}
    bullish = next(text for text, label in raw if label == 1)
    assert train["target"][[data.split_prompt(c)[1] for c in train["context"]].index(bullish)] == "positive"


@pytest.mark.real_data
def test_fiqa_train_is_exact_complement_of_finlora_test(real_data_dir):
    test = data.load_task("fiqa", "test", data_dir=real_data_dir, allow_sample=False)
    train = data.load_task("fiqa", "train", data_dir=real_data_dir, allow_sample=False)
    sentences = builders.read_fiqa(real_data_dir / "fiqa/task1_headline_ABSA_train.json",
                                   real_data_dir / "fiqa/task1_post_ABSA_train.json")
    all_text = {s for s, _, _ in sentences}
    test_in = {data.split_prompt(c)[1] for c in test["context"]}
    train_in = [data.split_prompt(c)[1] for c in train["context"]]
    assert len(all_text) == 1111 and len(test) == 235 and len(test_in) == 233
    assert test_in <= all_text  # every FinLoRA test sentence is a scored sentence
    assert set(train_in) == all_text - test_in and len(train_in) == len(set(train_in)) == 878
    kinds = {s: k for s, k, _ in sentences}
    for c in train["context"]:
        want = "tweet" if kinds[data.split_prompt(c)[1]] == "post" else "news"
        assert f"sentiment of this {want}?" in c


@pytest.mark.real_data
def test_ner_replay_reproduces_finlora_test(real_data_dir):
    """FinGPT's NER construction over FIN3 gives FinLoRA's 3502 rows (sentence, entity, target, template);
    the option order was random upstream, so only the option set is compared."""
    replay = builders.ner_finlora_replay(real_data_dir / "ner_fin/FIN3_test.txt")
    rows = _jsonl(real_data_dir / "finlora/test/ner_test.jsonl")
    assert len(replay) == len(rows) == 3502
    for (sentence, entity, etype, k), r in zip(replay, rows):
        instr, text = data.split_prompt(r["context"])
        question, options = instr.split("\nOptions: ")
        assert (text, question, r["target"]) == (sentence, NER_TEMPLATES[k].format(entity), etype)
        assert sorted(options.split(", ")) == sorted(data.get_task("ner").labels)


@pytest.mark.real_data
@pytest.mark.parametrize("name", BOTH_SPLITS)
def test_no_train_example_leaks_into_test(real_data_dir, name):
    train = data.load_task(name, "train", data_dir=real_data_dir, allow_sample=False)
    test = data.load_task(name, "test", data_dir=real_data_dir, allow_sample=False)
    assert len(train) and len(test)
    if data.get_task(name).prompt_format == "instruction":
        key = lambda c: data.split_prompt(c)[1]  # noqa: E731 - the input text (NER/headline reuse it)
    else:
        key = lambda c: c  # noqa: E731
    overlap = {key(c) for c in train["context"]} & {key(c) for c in test["context"]}
    assert not overlap, f"{name}: {len(overlap)} test inputs also in train, e.g. {sorted(overlap)[:2]}"


@pytest.mark.real_data
@pytest.mark.parametrize("name", list(data.TASKS))
def test_every_test_split_loads_in_finlora_format(real_data_dir, name):
    t = data.get_task(name)
    ds = data.load_task(name, "test", data_dir=real_data_dir, allow_sample=False)
    assert set(ds.column_names) == {"context", "target", "task", "source"}
    assert set(ds["task"]) == {name} and data.source_of(ds) == "real"
    assert data.data_source(name, data_dir=real_data_dir) == "real"
    assert all(isinstance(x, str) and x for x in ds["target"])
    if t.labels is not None:
        assert set(ds["target"]) == set(t.labels)
    if t.prompt_format == "instruction":
        assert all(c.startswith("Instruction: ") and c.endswith("\nAnswer: ") for c in ds["context"])
    if t.test_file.startswith("finlora/") and name != "tfns":
        assert ds["context"] == [r["context"] for r in _jsonl(real_data_dir / t.test_file)]
    sub = data.load_task(name, "test", data_dir=real_data_dir, max_samples=30, seed=0)
    assert len(sub) == min(30, len(ds)) and set(sub["context"]) <= set(ds["context"])


@pytest.mark.real_data
def test_headline_split_by_headline_and_counts(real_data_dir):
    test = data.load_task("headline", "test", data_dir=real_data_dir, allow_sample=False)
    train = data.load_task("headline", "train", data_dir=real_data_dir, allow_sample=False)
    n = len(builders.HEADLINE_QUESTIONS)
    assert (len(train) + len(test)) == 10570 * n and len(test) % n == 0
    assert 0.18 < len(test) / (len(train) + len(test)) < 0.22


@pytest.mark.real_data
def test_real_data_stratified_subsample(real_data_dir):
    a = data.load_task("fpb", "test", data_dir=real_data_dir, max_samples=121, seed=7)
    b = data.load_task("fpb", "test", data_dir=real_data_dir, max_samples=121, seed=7)
    assert a["context"] == b["context"]
    assert collections.Counter(a["target"]) == {"neutral": 73, "positive": 34, "negative": 14}


@pytest.mark.real_data
def test_data_dir_argument_beats_missing_env(real_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("FINLORA_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("FINLORA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FINLORA_OFFLINE", "1")
    assert data.data_source("fpb", data_dir=real_data_dir) == "real"
    # a data folder that is named but missing is a mistake, not a reason to train on the synthetic sample set
    with pytest.raises(sources.DataUnavailableError, match=r"^FINLORA_DATA_DIR='.*nothing': no such folder"):
        data.load_task("fpb", "test")
    with pytest.raises(sources.DataUnavailableError, match=r"^data_dir='.*nothing': no such folder"):
        sources.resolve("fpb/Sentences_50Agree.txt", data_dir=tmp_path / "nothing")


def test_a_task_mix_draws_no_progress_bar_and_leaves_the_bars_setting_alone(capfd, monkeypatch):
    import importlib

    import datasets

    ds_tqdm = importlib.import_module("datasets.utils.tqdm")   # the module; datasets.utils.tqdm is its class

    # as if HF_DATASETS_DISABLE_PROGRESS_BARS were unset when datasets was imported (it then decides, not the code)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(ds_tqdm, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    before = datasets.is_progress_bar_enabled()
    try:
        for enabled in (True, False):
            (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
            capfd.readouterr()
            mix = loader.load_tasks(["fpb", "fiqa"], "train", max_samples=20)
            err = capfd.readouterr().err
            assert len(mix) == 40 and "Flattening" not in err and datasets.is_progress_bar_enabled() == enabled, err
    finally:
        (datasets.enable_progress_bars if before else datasets.disable_progress_bars)()


def test_one_source_for_several():
    from finlora_utils.data import combined_source

    assert combined_source(["real", "real"]) == "real" and combined_source(["real", "sample"]) == "mixed"
    assert combined_source([]) == "none"

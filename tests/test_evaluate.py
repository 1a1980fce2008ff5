"""The evaluator: batch-size independence, score/generate agreement, metric argument order, multi-token
labels, NWGI collapse, calibration, extraction metrics, adapters switched on one base model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from finlora_utils import data, evaluate as ev, models, results
from finlora_utils.tokenization import collate, encode

SENT = list(data.get_task("fpb").labels)
NWGI = list(data.NWGI_LABELS)
TEXTS = ["Profit rose .", "The company cut 300 jobs after a weak quarter and lowered its outlook for 2010 .",
         "Sales were flat .", "Shares jumped 20 % on the news", "Operating loss widened to EUR 3 million from a profit",
         "The board will meet on Tuesday .", "Net sales increased by 5 % to EUR 210 million , the company said .",
         "x", "Orders fell sharply in the third quarter , while costs kept rising across all business units ."]


def rows(task="fpb", labels=SENT, n=len(TEXTS)):
    instr = data.get_task(task).instruction
    return [{"context": data.format_prompt(instr, TEXTS[i % len(TEXTS)]), "target": labels[i % len(labels)],
             "task": task} for i in range(n)]


@pytest.fixture(scope="module")
def tiny():
    model, tok = models.load_model("tiny-random-llama", precision="fp32")
    return model, tok


def naive_scores(model, tok, prompts, labels, boundary):
    """One full forward per (prompt, label): the definition score_labels must match."""
    out = np.zeros((len(prompts), len(labels)))
    for i, p in enumerate(prompts):
        ctx, conts = ev.split_label_tokens(tok, p, labels, boundary=boundary)
        for j, c in enumerate(conts):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ctx + c])).logits.float(), -1)[0]
            out[i, j] = sum(lp[len(ctx) - 1 + t, c[t]].item() for t in range(len(c)))
    return out


# --- batch-size independence ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["score", "generate", "calibrated"])
def test_predictions_identical_for_batch_sizes_1_3_8(tiny, mode):
    model, tok = tiny
    ds = rows()
    runs = {bs: ev.evaluate(model, tok, ds, mode=mode, batch_size=bs) for bs in (1, 3, 8)}
    assert runs[1]["predictions"] == runs[3]["predictions"] == runs[8]["predictions"]
    assert runs[1]["accuracy"] == runs[8]["accuracy"] and runs[1]["n"] == len(ds)


def test_generated_text_identical_for_batch_sizes(tiny):
    """Stronger than parsed labels: the raw greedy continuations match with left padding + masks."""
    model, tok = tiny
    prompts = [r["context"] for r in rows()]
    outs = [ev.generate_texts(model, tok, prompts, bs, max_new_tokens=6) for bs in (1, 3, 8)]
    assert outs[0] == outs[1] == outs[2]
    assert all(o for o in outs[0])


def test_scores_match_one_forward_per_label_and_do_not_depend_on_batch(tiny):
    model, tok = tiny
    prompts = [r["context"] for r in rows(n=5)]
    for labels, boundary in ((SENT, "train"), (NWGI, "train"), (NWGI, "joint")):  # NWGI: multi-token labels
        ref = naive_scores(model, tok, prompts, labels, boundary)
        for bs in (1, 2, 5):
            got = ev.score_labels(model, tok, prompts, labels, bs, boundary=boundary)
            np.testing.assert_allclose(got, ref, atol=1e-4)
        plain = ev.score_labels(model, tok, prompts, labels, 2, boundary=boundary, share_prefix=False)
        np.testing.assert_allclose(plain, ref, atol=1e-4)


def test_a_bf16_model_scores_its_label_tokens_with_fp32_logits():
    """In bf16 a logit is rounded to 8 bits of mantissa, so two labels can tie exactly and argmax hands the tie to
    the first label (6 of 200 FPB prompts with the embedded model): the label tokens' logits are taken in fp32
    from the head's input, here the same forward as the reference (batch 1, no shared prefix)."""
    model, tok = models.load_model("tiny-random-llama", precision="bf16")
    prompts = [r["context"] for r in rows(n=4)]
    w = model.get_output_embeddings().weight.float()
    for labels in (SENT, NWGI):   # NWGI: multi-token labels, scored in the second forward
        ref = np.zeros((len(prompts), len(labels)))
        for i, p in enumerate(prompts):
            ctx, conts = ev.split_label_tokens(tok, p, labels, boundary="train")
            for j, c in enumerate(conts):
                with torch.no_grad():
                    out = model(torch.tensor([ctx + c]), output_hidden_states=True)
                h, norm = out.hidden_states[-1][0].float(), torch.logsumexp(out.logits[0].float(), -1)
                ref[i, j] = sum((h[len(ctx) - 1 + t] @ w[c[t]] - norm[len(ctx) - 1 + t]).item() for t in range(len(c)))
        got = ev.score_labels(model, tok, prompts, labels, 1, share_prefix=False)
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)


def test_batch_specific_prefixes_score_like_single_forwards(tiny):
    """NER-like prompts: several templates, each shared by a group, so batches get their own long prefix."""
    model, tok = tiny
    labels = list(data.get_task("ner").labels)
    long_input = "Subordinated Loan Agreement between Silicium de Provence SAS and Evergreen Solar Inc , dated 2007 ."
    prompts = [data.format_prompt(f"What is the entity type of '{e}' in the input sentence.\nOptions: "
                                  + ", ".join(labels), f"{long_input} Item {k} .")
               for e in ("EVERGREEN SOLAR", "SILICIUM DE PROVENCE SAS") for k in range(3)]
    ref = naive_scores(model, tok, prompts, labels, "train")
    for bs in (1, 3, 6):
        np.testing.assert_allclose(ev.score_labels(model, tok, prompts, labels, bs), ref, atol=1e-4)


# --- tokenization boundary --------------------------------------------------------------------------

def test_train_boundary_scores_exactly_the_training_tokens(tiny):
    """The scored sequence (context + label tokens) is what tokenization.encode trains on, minus eos."""
    _, tok = tiny
    for r in rows("nwgi", NWGI, 7) + rows():
        labels = NWGI if r["task"] == "nwgi" else SENT
        ctx, conts = ev.split_label_tokens(tok, r["context"], labels)
        trained = encode(tok, r["context"], r["target"])["input_ids"]
        assert ctx + conts[labels.index(r["target"])] + [tok.eos_token_id] == trained


def test_joint_boundary_merges_the_space_into_the_label(tiny):
    _, tok = tiny
    p = rows()[0]["context"]
    assert p.endswith("Answer: ")
    ctx, conts = ev.split_label_tokens(tok, p, NWGI, boundary="joint")
    for lab, c in zip(NWGI, conts):
        assert tok.decode(ctx + c) == p + lab           # nothing lost or doubled at the boundary
        assert tok.decode(c).startswith(" ")             # the space went into the label's first token
    assert len(set(tuple(c) for c in conts)) == len(NWGI)
    assert max(len(c) for c in conts) > 1                 # really multi-token


def test_label_that_is_a_token_prefix_of_another_gets_eos(tiny):
    _, tok = tiny
    _, conts = ev.split_label_tokens(tok, rows()[0]["context"], ["strong", "strong negative"])
    assert all(c[-1] == tok.eos_token_id for c in conts)


# --- a model that always answers one label ----------------------------------------------------------

@pytest.fixture(scope="module")
def finetuned_positive():
    """The tiny model trained a few steps (plain loop, the training tokenization) to answer 'positive'."""
    model, tok = models.load_model("tiny-random-llama", precision="fp32")
    batch = collate([encode(tok, r["context"], "positive") for r in rows()], tok.pad_token_id)
    # Loss on the answer positions only (what a causal-LM loss with masked labels computes),
    # without materialising the logits of every prompt position.
    target = batch["labels"][:, 1:]
    keep = target != -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        h = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        loss = torch.nn.functional.cross_entropy(model.lm_head(h[:, :-1][keep]), target[keep])
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert loss.item() < 0.1, f"tiny model did not learn the constant answer (loss {loss.item():.3f})"
    return model, tok


def test_score_and_generate_agree_on_a_model_finetuned_to_one_label(finetuned_positive):
    model, tok = finetuned_positive
    ds = rows(n=12)
    # Unseen inputs too: the answer must not depend on having memorised the training prompts.
    ds += [{"context": data.format_prompt(data.get_task("fpb").instruction, f"Item {i} was reported today ."),
            "target": "negative", "task": "fpb"} for i in range(4)]
    sc = ev.evaluate(model, tok, ds, mode="score", batch_size=5)
    gen = ev.evaluate(model, tok, ds, mode="generate", batch_size=5)
    assert sc["predictions"] == gen["predictions"] == ["positive"] * len(ds)
    assert gen["unparseable"] == 0 and sc["pred_distribution"] == {"positive": len(ds)}
    gold = [r["target"] for r in ds]
    assert sc["accuracy"] == gen["accuracy"] == gold.count("positive") / len(ds)
    assert ev.generate_texts(model, tok, [ds[0]["context"]], 1)[0] == "positive"


# --- metrics -----------------------------------------------------------------------------------------

def test_f1_argument_order_pinned_with_asymmetric_classes():
    gold = ["a", "a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "a", "b", "b", "c", "c"]
    m = ev.classification_metrics(gold, pred, ["a", "b", "c"])
    f1 = {"a": 6 / 7, "b": 1 / 2, "c": 2 / 3}
    # weighted by GOLD support (4, 2, 1); swapped arguments would weight by predicted support (3, 2, 2).
    assert m["f1_weighted"] == pytest.approx((4 * f1["a"] + 2 * f1["b"] + 1 * f1["c"]) / 7)
    assert m["f1_weighted"] != pytest.approx((3 * f1["a"] + 2 * f1["b"] + 2 * f1["c"]) / 7)
    assert m["f1_macro"] == pytest.approx(sum(f1.values()) / 3)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7), "support": 4}
    assert m["confusion"] == [[3, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows gold, columns pred
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["majority_label"] == "a" and m["majority_baseline"] == pytest.approx(4 / 7)


def test_finlora_f1_rule_pinned_beside_sklearn_weighted_f1():
    """FinLoRA's test_dataset.py: the first gold label found (substring) decides; a wrong answer is replaced
    by its raw text, so it no longer counts against the precision of the label it mentions."""
    gold = ["positive", "positive", "negative", "neutral", "neutral", "neutral", "negative"]
    outputs = ["positive", "unclear", "Negative.", "neutral", "positive sentiment", "I think neutral",
               "positive, not negative"]
    ours = ev.classification_metrics(gold, [ev.parse_label(o, SENT) for o in outputs], SENT)
    theirs = ev.f1_weighted_finlora(gold, outputs)
    # ours: positive predicted 3x (1 right) -> F1 0.4; negative 2/3; neutral 0.8; weights 2, 2, 3
    assert ours["f1_weighted"] == pytest.approx((2 * 0.4 + 2 * 2 / 3 + 3 * 0.8) / 7)      # 0.6476
    # FinLoRA: "positive sentiment" / "positive, not negative" are classes of their own -> positive F1 2/3
    assert theirs["f1_weighted_finlora"] == pytest.approx((2 * 2 / 3 + 2 * 2 / 3 + 3 * 0.8) / 7)   # 0.7238
    assert ours["accuracy"] == theirs["accuracy_finlora"] == pytest.approx(4 / 7)
    # label scoring: every answer is a label, the rule is the identity
    picked = ["positive", "neutral", "negative", "neutral", "positive", "neutral", "positive"]
    assert ev.f1_weighted_finlora(gold, picked)["f1_weighted_finlora"] == pytest.approx(
        ev.classification_metrics(gold, picked, SENT)["f1_weighted"])
    assert ev.finlora_response("Answer: neutral", "neutral", SENT) == (True, "neutral")
    with pytest.raises(ev.EvalError, match="outputs: expected 7"):
        ev.f1_weighted_finlora(gold, outputs[:-1])


def test_unparseable_counts_wrong_and_shows_in_distribution_and_confusion():
    m = ev.classification_metrics(["a", "b", "b"], ["a", None, "b"], ["a", "b"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["unparseable"] == 1
    assert m["pred_distribution"] == {"<unparseable>": 1, "a": 1, "b": 1}
    assert m["confusion_labels"] == ["a", "b", "<unparseable>"]
    assert m["confusion"][1] == [0, 1, 1]
    assert m["per_class"]["b"]["recall"] == 0.5


def test_degenerate_predictor_is_visible_against_the_majority_baseline():
    gold = ["neutral"] * 6 + ["positive"] * 3 + ["negative"]
    m = ev.classification_metrics(gold, ["negative"] * 10, SENT)
    assert m["accuracy"] == pytest.approx(0.1) and m["majority_baseline"] == pytest.approx(0.6)
    assert m["pred_distribution"] == {"negative": 10}
    assert m["majority_f1_weighted"] == pytest.approx(0.6 * 0.75)  # F1(neutral) = 2*.6/(1+.6), weight .6


def test_nwgi_seven_to_three_collapse():
    gold = ["strong negative", "mildly negative", "neutral", "moderately positive", "strong positive", "neutral"]
    pred = ["mildly negative", "mildly negative", "mildly positive", "strong positive", "strong negative", None]
    seven = ev.classification_metrics(gold, pred, NWGI)
    three = ev.collapse_nwgi(gold, pred)
    assert seven["accuracy"] == pytest.approx(1 / 6)
    assert three["accuracy"] == pytest.approx(3 / 6)  # rows 0, 1, 3 agree once grades are folded
    assert three["labels"] == ["negative", "neutral", "positive"] and three["unparseable"] == 1
    assert three["gold_distribution"] == {"negative": 2, "neutral": 2, "positive": 2}


def test_nwgi_task_reports_both_granularities(tiny):
    model, tok = tiny
    info = ev.evaluate(model, tok, rows("nwgi", NWGI, 7), mode="score", batch_size=4)
    assert info["labels"] == NWGI and set(info["nwgi_3class"]["labels"]) == {"negative", "neutral", "positive"}
    assert info["nwgi_3class"]["accuracy"] >= info["accuracy"]


def test_parse_label_first_word_longest_match_and_none():
    assert ev.parse_label("\nPositive, not negative", SENT) == "positive"
    assert ev.parse_label("it is negative. positive later", SENT) == "negative"
    assert ev.parse_label("moderately negative", NWGI) == "moderately negative"
    assert ev.parse_label("I think: neutral", NWGI) == "neutral"
    assert ev.parse_label("nonpositive outlook", SENT) is None   # whole words only
    assert ev.parse_label("The company said", SENT) is None       # FinLoRA would have said 'neutral'


def test_extraction_exact_match_and_numeric_tolerance():
    gold = ["15092.44", "Revenues", "2297.17", "us-gaap:Assets"]
    pred = [" $15,092.44", "revenues.", "2300", "Assets"]
    m = ev.extraction_metrics(gold, pred)
    assert m["exact_match"] == pytest.approx(1 / 4)       # only 'revenues.' after normalisation
    assert m["numeric_accuracy"] == pytest.approx(2 / 4)  # 15092.44 and 2300 ~ 2297.17 within 1 %
    assert m["accuracy"] == pytest.approx(3 / 4) and m["numeric_gold"] == 2
    tight = ev.extraction_metrics(gold, pred, rel_tol=1e-4)
    assert tight["numeric_accuracy"] == pytest.approx(1 / 4)
    b = ev.extraction_metrics(["A,B,C", "D"], ["A, x ,C", "d"], batched=True)
    assert b["accuracy"] == pytest.approx(3 / 4) and b["batched_items"] == 4


def test_numbers_inside_text_gold_are_not_credited():
    """Only a gold answer that is a number is compared numerically: echoing a year, a formula's first
    operand or a tag's digit out of the prompt must not score."""
    assert ev.gold_number(" $1,832. ") == 1832.0 and ev.gold_number("12.5%") == 12.5
    assert ev.gold_number("-0.397") == -0.397 and ev.gold_number(".5") == 0.5
    for text in ("In 2019 revenue rose", "(6226000000 / 38542000000) * 100", "AuthorizedAmount1", "1 2", ""):
        assert ev.gold_number(text) is None, text
    gold = ["Multiple lawsuits followed the 2018 Lion Air crash", "(6226000000 / 38542000000) * 100",
            "StockRepurchaseProgramAuthorizedAmount1,Revenues", "1832"]
    pred = ["The 2018 season", "6226000000", "1", "The answer is 1,832 million"]
    m = ev.extraction_metrics(gold, pred)
    assert m["numeric_gold"] == 1 and m["numeric_accuracy"] == pytest.approx(1 / 4)
    assert m["accuracy"] == pytest.approx(1 / 4) and m["exact_match"] == 0
    b = ev.extraction_metrics(gold[2:3], pred[2:3], batched=True)
    assert b["numeric_accuracy"] == 0 and b["accuracy"] == 0


@pytest.mark.real_data
def test_rescore_reapplies_metrics_to_stored_predictions(tmp_path, real_data_dir):
    """A results file scored under an older rule is rescored from its predictions without a model; a
    sample that does not line up with the predictions is refused and nothing is written."""
    from finlora_utils import data

    gold = list(data.load_task("xbrl_formula", "test", data_dir=real_data_dir, max_samples=4, seed=3)["target"])
    preds = [gold[0], gold[1].split()[0].strip("("), "no idea", gold[3] + " "]   # 2 exact, 1 echoed operand
    stale = dict(ev.extraction_metrics(gold, preds), accuracy=0.75, numeric_accuracy=0.25, numeric_gold=4)
    entry = dict(stale, task="xbrl_formula", kind="extraction", metric="accuracy", mode="generate",
                 modes={"score": dict(stale, predictions=preds)})
    obj = results.new_result("xbrl_formula_x_base", {"model": "x", "max_samples": 4}, seed=3)
    obj["eval_info"] = {"xbrl_formula": entry}
    path = results.write_json(tmp_path / "r.json", obj)
    changed = ev.rescore(path, data_dir=real_data_dir)
    assert changed["xbrl_formula"]["before"]["accuracy"] == 0.75
    after = results.read_result(path)["eval_info"]["xbrl_formula"]
    assert after["accuracy"] == pytest.approx(2 / 4) and after["numeric_gold"] == 0
    assert after["modes"]["score"]["accuracy"] == after["accuracy"] and after["modes"]["score"]["predictions"] == preds
    assert after["test_sample"] == {"max_samples": 4, "seed": 3} and after["rescored"]["before"]["accuracy"] == 0.75
    assert ev.rescore(path, data_dir=real_data_dir)["xbrl_formula"]["after"]["accuracy"] == pytest.approx(2 / 4)
    assert results.read_result(path)["eval_info"]["xbrl_formula"]["rescored"]["before"]["accuracy"] == 0.75

    obj["eval_info"]["xbrl_formula"]["test_sample"] = {"max_samples": 4, "seed": 4}   # another sample
    bad = results.write_json(tmp_path / "bad.json", obj)
    before = bad.read_text()
    with pytest.raises(ev.EvalError, match="does not line up"):
        ev.rescore(bad, data_dir=real_data_dir)
    assert bad.read_text() == before


# --- calibration -------------------------------------------------------------------------------------

def test_calibration_removes_a_constant_label_bias():
    """A model whose lm_head prefers 'negative' answers negative everywhere; calibration exposes and
    divides out that prior (measured on content-free inputs)."""
    model, tok = models.load_model("tiny-random-llama", precision="fp32")
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    neg = tok("negative", add_special_tokens=False)["input_ids"]
    assert len(neg) == 1
    head.bias.data[neg[0]] = 8.0
    model.lm_head = head
    ds = rows(n=9)
    raw = ev.evaluate(model, tok, ds, mode="score")
    cal = ev.evaluate(model, tok, ds, mode="calibrated")
    assert raw["pred_distribution"] == {"negative": 9}
    assert cal["calibration"]["p_cf"]["negative"] > 0.9
    assert cal["pred_distribution"].get("negative", 0) < 9


# --- inputs ------------------------------------------------------------------------------------------

def test_bad_inputs_name_the_parameter(tiny):
    model, tok = tiny
    with pytest.raises(ev.EvalError, match="mode='greedy'"):
        ev.evaluate(model, tok, rows(), mode="greedy")
    with pytest.raises(ev.EvalError, match="batch_size=0"):
        ev.evaluate(model, tok, rows(), batch_size=0)
    with pytest.raises(ev.EvalError, match="boundary='left'"):
        ev.evaluate(model, tok, rows(), boundary="left")
    with pytest.raises(ev.EvalError, match="'target'"):
        ev.evaluate(model, tok, [{"context": "x"}])
    with pytest.raises(ev.EvalError, match="at least one example"):
        ev.evaluate(model, tok, [])


@pytest.mark.real_data
def test_task_by_name_on_real_data(tiny, real_data_dir):
    model, tok = tiny
    info = ev.evaluate(model, tok, "fpb", mode="score", batch_size=8, max_samples=12, data_dir=real_data_dir)
    assert info["n"] == 12 and info["data_source"] == "real" and info["task"] == "fpb"
    assert sum(info["pred_distribution"].values()) == 12
    assert set(info) >= {"accuracy", "f1_weighted", "f1_macro", "majority_baseline", "unparseable",
                         "s_per_example", "confusion", "labels"}
    ext = ev.evaluate(model, tok, "formula", max_samples=2, max_new_tokens=4, data_dir=real_data_dir)
    assert ext["mode"] == "generate" and ext["kind"] == "generation" and "numeric_accuracy" in ext


# --- adapters on one base model ----------------------------------------------------------------------

def _fake_run(tmp_path, k, tok):
    from peft import LoraConfig, get_peft_model

    base, _ = models.load_model("tiny-random-llama", precision="fp32")
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(k)
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    adir = tmp_path / "runs" / f"run{k}" / "adapter"
    pm.save_pretrained(adir)
    ref = ev.score_labels(pm, tok, [r["context"] for r in rows()], SENT, 4)
    run_id = f"fpb_tiny-random-llama_32bit_r4_v{k}"
    obj = results.new_result(run_id, {"model": "tiny-random-llama", "tasks": ["fpb"], "precision": "fp32"}, 0)
    obj["train_info"] = {"adapter_path": str(adir), "wall_s": 1.0}
    return results.write_json(tmp_path / "results" / f"{run_id}.json", obj), ref


def test_adapters_switched_on_one_base_and_eval_info_written(tmp_path, tiny, monkeypatch):
    _, tok = tiny
    (p0, ref0), (p1, ref1) = _fake_run(tmp_path, 0, tok), _fake_run(tmp_path, 1, tok)
    results.write_json(tmp_path / "results" / "fpb_x_16bit_base.json",
                       results.new_result("fpb_x_16bit_base", {"model": "tiny-random-llama"}, 0))
    assert ev.discover_runs(tmp_path / "results") == [p0, p1]
    loads = []
    real_load = ev._load
    monkeypatch.setattr(ev, "_load", lambda *a: loads.append(a) or real_load(*a))
    ds = rows()
    monkeypatch.setattr(data, "load_task", lambda *a, **k: ds)
    out = ev.evaluate_runs([p0, p1], modes=("score", "generate"), batch_size=4)
    assert loads == [("tiny-random-llama", "fp32")]  # one base model for both adapters
    for p, ref in ((p0, ref0), (p1, ref1)):
        r = results.read_result(p)
        e = r["eval_info"]["fpb"]
        assert e["modes"]["score"]["predictions"] == [SENT[j] for j in ref.argmax(1)]
        assert e["mode"] == "score" and e["adapter"] == r["run_id"] and 0 <= e["generate_score_agreement"] <= 1
        assert r["train_info"]["wall_s"] == 1.0  # merged, not replaced
        # the evaluation says when, at which commit and on what it ran: run_info and meta_info describe the training
        made = e["evaluated"]
        assert made["git_commit"] == results.git_commit() and made["at"] >= r["run_info"]["created"]
        assert made["environment"]["hardware"]["cpu"] and made["environment"]["packages"]["torch"]
    assert set(out) == {results.read_result(p0)["run_id"], results.read_result(p1)["run_id"]}
    assert not np.allclose(ref0, ref1)


def test_base_result_file_has_every_mode_and_no_train_info(tmp_path, tiny, monkeypatch):
    model, tok = tiny
    ds = rows()
    monkeypatch.setattr(data, "load_task", lambda *a, **k: ds)
    [path] = ev.evaluate_base("tiny-random-llama", ["fpb"], tmp_path, precision="fp32", model=model,
                              tokenizer=tok, batch_size=4, preset="smoke")
    assert path.name == "fpb_tiny-random-llama_32bit_base.json"
    r = results.read_result(path)
    assert r["train_info"] is None and r["run_info"]["preset"] == "smoke"
    e = r["eval_info"]["fpb"]
    assert set(e["modes"]) == {"score", "calibrated", "generate"} and e["mode"] == "score"
    assert e["majority_baseline"] == pytest.approx(3 / 9) and "predictions" not in e


def test_a_base_evaluation_keeps_the_stored_modes_of_the_same_sample_and_says_what_it_replaces(tmp_path, tiny,
                                                                                                 monkeypatch, capsys):
    """Notebooks 01 (score on a sample) and 05 (three modes) write the same base file: 01 rerun alone replaced 05's
    evaluation without a word; the same sample now keeps the modes not rerun, another sample says what it replaces."""
    model, tok = tiny
    ds = rows()
    monkeypatch.setattr(data, "load_task", lambda *a, max_samples=None, **k: ds[:max_samples] if max_samples else ds)
    kw = dict(precision="fp32", model=model, tokenizer=tok, batch_size=4)
    [path] = ev.evaluate_base("tiny-random-llama", ["fpb"], tmp_path, **kw)
    ev.evaluate_base("tiny-random-llama", ["fpb"], tmp_path, modes=("score",), **kw)
    e = results.read_result(path)["eval_info"]["fpb"]
    assert set(e["modes"]) == {"score", "calibrated", "generate"} and "replaces" not in capsys.readouterr().out
    ev.evaluate_base("tiny-random-llama", ["fpb"], tmp_path, modes=("score",), max_samples=4, **kw)
    e = results.read_result(path)["eval_info"]["fpb"]
    assert set(e["modes"]) == {"score"} and e["n"] == 4
    out = capsys.readouterr().out
    assert (f"{path.name}: replaces the stored zero-shot evaluation of fpb (9 examples (all asked), modes score, "
            "calibrated, generate") in out and "with this one (4 examples (4 asked), modes score" in out, out


def test_macro_f1_leaves_out_a_label_neither_in_the_test_sample_nor_answered():
    from finlora_utils.metrics import classification_metrics

    m = classification_metrics(["flat", "up", "flat"], ["flat", "up", "flat"], ["down", "flat", "up"])
    assert m["accuracy"] == 1.0 and m["f1_macro"] == 1.0 and m["per_class"]["down"]["support"] == 0
    answered = classification_metrics(["flat", "up"], ["down", "up"], ["down", "flat", "up"])   # down: answered
    assert answered["f1_macro"] == pytest.approx((0 + 0 + 1) / 3)


def test_evaluating_one_mode_again_keeps_the_other_stored_modes(tmp_path, tiny, monkeypatch):
    """`evaluate RUN --modes score,generate` then `evaluate RUN` used to drop the stored generate results."""
    _, tok = tiny
    p0, _ = _fake_run(tmp_path, 0, tok)
    ds = rows()
    monkeypatch.setattr(data, "load_task", lambda *a, **k: ds)
    ev.evaluate_runs([p0], modes=("score", "generate"), batch_size=4)
    first = results.read_result(p0)["eval_info"]["fpb"]
    ev.evaluate_runs([p0], modes=("score",), batch_size=4)
    again = results.read_result(p0)["eval_info"]["fpb"]
    assert list(again["modes"]) == ["score", "generate"] and again["mode"] == "score"
    assert again["modes"]["generate"]["predictions"] == first["modes"]["generate"]["predictions"]
    assert again["modes"]["generate"]["evaluated"] == first["evaluated"]   # when the kept mode ran
    assert again["evaluated"]["at"] >= first["evaluated"]["at"]
    assert again["generate_score_agreement"] == first["generate_score_agreement"]   # recomputed over the pair
    # other test data (here another file hash: the sample set, then the real one) replaces the entry whole
    stored = results.read_result(p0)
    stored["eval_info"]["fpb"]["data_files"] = {"fpb_test.jsonl": "0" * 64}
    results.write_json(p0, stored)
    ev.evaluate_runs([p0], modes=("score",), batch_size=4)
    assert list(results.read_result(p0)["eval_info"]["fpb"]["modes"]) == ["score"]
    ev.evaluate_runs([p0], modes=("score", "generate"), batch_size=4)
    # another setting (here the precision) replaces the entry whole: its modes would not compare
    ev.evaluate_runs([p0], modes=("score",), batch_size=4, precision="bf16")
    assert list(results.read_result(p0)["eval_info"]["fpb"]["modes"]) == ["score"]


def test_a_gold_label_spelt_exactly_so_is_kept_where_another_differs_only_in_case():
    """Own data may hold 'Approve' and 'approve' as two classes: every gold 'approve' was counted as 'Approve'."""
    assert ev._canon("approve", ["Approve", "approve"]) == "approve"
    assert ev._canon(" Approve ", ["Approve", "approve"]) == "Approve"
    assert ev._canon("NEUTRAL", SENT) == "neutral"


def test_a_task_without_a_label_set_is_stored_under_the_mode_that_ran(tmp_path, tiny, capsys):
    """A generated-answer task asked for `score` generates: it was stored and printed as score."""
    model, tok = tiny
    free = tmp_path / "free_train.csv"
    free.write_text("text,label\na,x1\nb,x2\nc,x3\nd,x4\n")
    gen = data.register_files(free, max_labels=0, instruction="Answer with the code.")
    entry = ev.evaluate_modes(model, tok, gen.name, ("score",), batch_size=2, max_new_tokens=2)
    assert list(entry["modes"]) == ["generate"] and entry["mode"] == "generate"
    assert f"[eval {gen.name}] generate:" in capsys.readouterr().out


def test_selected_runs_name_a_run_id_that_is_not_there(tmp_path):
    """Notebook 05's RUNS with a typo evaluated nothing and showed an empty table."""
    from finlora_utils.config import ConfigError

    for rid in ("fpb_tiny-random-llama_4bit_r4", "fpb_tiny-random-llama_32bit_r8"):
        r = results.new_result(rid, {"model": "tiny-random-llama", "tasks": ["fpb"], "precision": "nf4"}, 0)
        (tmp_path / "runs" / rid).mkdir(parents=True)
        r["train_info"] = {"adapter_path": str(tmp_path / "runs" / rid)}
        results.write_json(tmp_path / f"{rid}.json", r)
    assert [p.stem for p in ev.select_runs(tmp_path, "tiny-random-llama", "")] == [
        "fpb_tiny-random-llama_32bit_r8", "fpb_tiny-random-llama_4bit_r4"]
    assert [p.stem for p in ev.select_runs(tmp_path, None, " fpb_tiny-random-llama_4bit_r4 ")] == [
        "fpb_tiny-random-llama_4bit_r4"]
    with pytest.raises(ConfigError, match=r"RUNS: fpb_tiny-random-llama_4bit_r5 not among .* \(did you mean "
                                          r"'fpb_tiny-random-llama_4bit_r4'\?\)"):
        ev.select_runs(tmp_path, "tiny-random-llama", "fpb_tiny-random-llama_4bit_r5")


def test_a_stored_mode_of_another_sample_size_is_not_kept():
    """Own data's holdout changed (repeated rows held out together) while the entry's settings did not: a stored
    generate of 10 examples was kept beside a new score of 18, and their agreement raised."""
    old = {"n": 10, "modes": {"score": {"mode": "score", "n": 10}, "generate": {"mode": "generate", "n": 10,
                                                                               "predictions": ["a"] * 10}}}
    new = {"n": 18, "modes": {"score": {"mode": "score", "n": 18, "predictions": ["a"] * 18}}}
    assert list(ev.keep_other_modes(old, dict(new))["modes"]) == ["score"]
    same = {"n": 10, "modes": {"score": {"mode": "score", "n": 10, "predictions": ["a"] * 10}}}
    merged = ev.keep_other_modes(old, same)
    assert list(merged["modes"]) == ["score", "generate"] and merged["generate_score_agreement"] == 1.0

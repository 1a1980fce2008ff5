"""Tokenization for training: exact label masking per tokenizer family, truncation of long inputs, batching."""
from __future__ import annotations

import pytest

from finlora_utils.config import ConfigError
from finlora_utils.data import format_prompt
from finlora_utils.tokenization import IGNORE, batch_plan, collate, encode, encode_dataset, length_grouped_batches

FPB_INSTRUCTION = "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}."
CONTEXT = format_prompt(FPB_INSTRUCTION, "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .")


@pytest.fixture(scope="module")
def smollm2():
    from finlora_utils.models import load_tokenizer

    return load_tokenizer("embedded")


def _with_bos(tok):
    """Llama-3 family: the same byte-level BPE, but the tokenizer prepends a BOS token."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str())
    backend.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>")


def _sentencepiece_style():
    """Llama-2 / Mistral family: metaspace ('▁word') BPE with a <s> prefix, trained here on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    corpus = [CONTEXT + "neutral positive negative"] * 4 + ["Instruction: Input: Answer: profit rose fell"]
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def test_prompt_masked_target_labelled_smollm2_exact(smollm2):
    ex = encode(smollm2, CONTEXT, "positive")
    # FinLoRA tokenizes the prompt and the target apart: "...Answer:" ":" " " | "positive" | <|im_end|>
    assert ex["input_ids"][-4:] == [42, 216, 16185, 2]
    n_prompt = len(smollm2(CONTEXT)["input_ids"])
    assert ex["labels"] == [IGNORE] * n_prompt + [16185, 2]
    assert len(ex["input_ids"]) == n_prompt + 2 and not ex["truncated"]


@pytest.mark.parametrize("family", ["llama3_bos", "sentencepiece"])
def test_prompt_masked_target_labelled_other_families(smollm2, family):
    tok = _with_bos(smollm2) if family == "llama3_bos" else _sentencepiece_style()
    prompt = tok(CONTEXT)["input_ids"]
    target = tok("neutral", add_special_tokens=False)["input_ids"]
    assert prompt[0] == tok.bos_token_id and tok.bos_token_id not in target
    ex = encode(tok, CONTEXT, "neutral")
    assert ex["input_ids"] == prompt + target + [tok.eos_token_id]
    assert ex["labels"] == [IGNORE] * len(prompt) + target + [tok.eos_token_id]
    # truncation keeps the BOS and the instruction for this family too
    long = format_prompt(FPB_INSTRUCTION, "profit rose " * 3000)
    cut = encode(tok, long, "neutral", max_seq_len=64)
    assert cut["truncated"] and len(cut["input_ids"]) == 64 and cut["input_ids"][0] == tok.bos_token_id
    assert cut["labels"][-len(target) - 1:] == target + [tok.eos_token_id]


@pytest.mark.parametrize("mode", ["head", "head_tail"])
def test_truncation_of_10k_token_input_keeps_instruction_answer_and_target(smollm2, mode):
    text = " ".join(f"w{i}" for i in range(5000)) + " THE_END"
    context = format_prompt(FPB_INSTRUCTION, text)
    assert len(smollm2(context)["input_ids"]) > 10_000
    ex = encode(smollm2, context, "negative", max_seq_len=200, truncation=mode)
    assert ex["truncated"] and len(ex["input_ids"]) == 200
    n_prompt = ex["labels"].count(IGNORE)
    prompt = smollm2.decode(ex["input_ids"][:n_prompt])
    assert prompt.startswith("Instruction: " + FPB_INSTRUCTION + "\nInput: w0 w1 w2")
    assert prompt.endswith("\nAnswer: ")
    assert ("THE_END" in prompt) == (mode == "head_tail")
    # the untouched ends are token-identical to the untruncated tokenization
    full = smollm2(context)["input_ids"]
    assert ex["input_ids"][:20] == full[:20]
    assert ex["input_ids"][n_prompt - 4:n_prompt] == full[-4:]
    assert smollm2.decode(ex["input_ids"][n_prompt:]) == "negative<|im_end|>"


def test_native_prompt_keeps_head_and_tail(smollm2):
    context = "You are XBRL expert. " + "<fact>1</fact> " * 2000 + "Question: What is the value? Answer:"
    ex = encode(smollm2, context, "16116000000", max_seq_len=128)
    text = smollm2.decode(ex["input_ids"])
    assert len(ex["input_ids"]) == 128 and text.startswith("You are XBRL expert.")
    assert "Question: What is the value? Answer:16116000000" in text


def test_truncation_counts_per_task_and_too_short_max_seq_len(smollm2):
    from datasets import Dataset

    rows = {"context": [CONTEXT, format_prompt(FPB_INSTRUCTION, "x " * 400), CONTEXT],
            "target": ["neutral", "positive", "negative"], "task": ["fpb", "fpb", "tfns"]}
    examples, truncated = encode_dataset(Dataset.from_dict(rows), smollm2, max_seq_len=96)
    assert truncated == {"fpb": 1, "tfns": 0}
    assert [e["truncated"] for e in examples] == [False, True, False]
    with pytest.raises(ConfigError, match=r"max_seq_len=20: expected >= \d+.*task fpb, row 0"):
        encode_dataset(Dataset.from_dict(rows), smollm2, max_seq_len=20)


def test_collate_pads_right_dynamically(smollm2):
    a, b = encode(smollm2, CONTEXT, "neutral"), encode(smollm2, format_prompt("Q?", "x"), "positive")
    batch = collate([a, b], pad_id=smollm2.pad_token_id)
    n = len(a["input_ids"])
    assert batch["input_ids"].shape == (2, n)          # the longest of this batch, not a fixed length
    assert batch["attention_mask"][1].tolist() == [1] * len(b["input_ids"]) + [0] * (n - len(b["input_ids"]))
    assert batch["labels"][1, len(b["input_ids"]):].eq(IGNORE).all()


def test_length_grouped_batches_and_plan():
    lengths = [(i * 37) % 101 + 5 for i in range(200)]
    batches = length_grouped_batches(lengths, 8, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert max(lengths[i] for i in batches[0]) == max(lengths)       # the longest batch goes first
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10                                                 # similar lengths share a batch
    assert batches == length_grouped_batches(lengths, 8, seed=0) != length_grouped_batches(lengths, 8, seed=1)
    plan = batch_plan(lengths, batch_size=8, grad_accum=2, epochs=1.5, seed=0)
    assert len(plan) == 20 and all(len(s) == 2 for s in plan[:12]) and len(plan[12]) == 1   # 13 steps/epoch
    assert len(batch_plan(lengths, 8, max_steps=40, seed=0)) == 40                          # cycles epochs

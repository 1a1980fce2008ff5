"""The task registry: every FinLoRA task with its instruction, label set and metric, plus prompt helpers.

Pure Python, no I/O, nothing heavy imported: safe to import anywhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PROMPT_INSTRUCTION = "Instruction: "
PROMPT_INPUT = "\nInput: "
PROMPT_ANSWER = "\nAnswer: "

KINDS = ("classification", "extraction", "generation")
# Metric vocabulary (computed by finlora_utils.evaluate):
#   accuracy          exact label / answer accuracy (classification also reports f1_weighted, f1_macro)
#   batched_accuracy  FinLoRA's FiNER/FNXL rule: split answer and target on "," and compare item by item
#   bertscore         BERTScore F1 of a free-text answer against the target
METRICS = ("accuracy", "batched_accuracy", "bertscore")

SENTIMENT3 = ("negative", "neutral", "positive")
NWGI_LABELS = ("strong negative", "moderately negative", "mildly negative", "neutral",
               "mildly positive", "moderately positive", "strong positive")
NER_LABELS = ("person", "organization", "location")
HEADLINE_LABELS = ("Yes", "No")

NEWS_INSTRUCTION = "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}."
TWEET_INSTRUCTION = "What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}."
NWGI_INSTRUCTION = ("What is the sentiment of this news? Please choose an answer from "
                    "{" + "/".join(NWGI_LABELS) + "}.")
# FinGPT's 17 NER question templates, in the order FinLoRA's ner_test.jsonl cycles through them.
NER_TEMPLATES = (
    "What is the entity type of '{}' in the input sentence.",
    "With the input text as context, identify the entity type of '{}'.",
    "Using the input sentence as a reference, analyze and specify the entity type of '{}'.",
    "In the context of the input sentence, examine and categorize the entity type of '{}'.",
    "Utilize the input text as context to explore and ascertain the entity type of '{}'.",
    "Leverage the input sentence to evaluate and define the entity type for '{}'.",
    "Considering the input sentence as context, inspect and classify the entity type of '{}'.",
    "With the input sentence as a backdrop, scrutinize and determine the entity type of '{}'.",
    "Interpreting the input sentence as context, specify the entity type for '{}'.",
    "Assessing the input sentence as context, label the entity type of '{}'.",
    "In the input sentence, determine the entity type for '{}'.",
    "Within the input text, identify the entity type of '{}'.",
    "Analyze the input sentence to find the entity type of '{}'.",
    "Check the input sentence for the entity type associated with '{}'.",
    "Explore the input sentence to ascertain the entity type of '{}'.",
    "Examine the input text to classify the entity type of '{}'.",
    "Scrutinize the input sentence to define the entity type of '{}'.",
)
NER_INSTRUCTION = NER_TEMPLATES[0] + "\nOptions: {}"  # entity, then a permutation of NER_LABELS joined by ", "
# Headline questions (FinGPT wording where the gold CSV has the matching column; see builders.HEADLINE_QUESTIONS).
HEADLINE_INSTRUCTION = "Does the news headline talk about price going up? Please choose an answer from {Yes/No}."


@dataclass(frozen=True)
class Task:
    """One FinLoRA task.

    ``instruction`` is the (primary) instruction text or template; tasks whose FinLoRA prompts do not use the
    ``Instruction/Input/Answer`` layout (XBRL, formula, financebench) have ``prompt_format="native"`` and
    ``instruction`` describes the prompt. ``test_file`` is the path, relative to the data directory, of the
    file the test split is read (or rebuilt) from.
    """

    name: str
    kind: str
    labels: tuple[str, ...] | None
    metric: str
    instruction: str
    test_file: str
    has_train: bool
    description: str
    prompt_format: str = "instruction"  # "instruction" (Instruction/Input/Answer) | "native" (FinLoRA's own)
    variant_of: str | None = None  # a re-labelled variant of another task (excluded from task_names by default)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Task {self.name}: kind={self.kind!r} not in {KINDS}")
        if self.metric not in METRICS:
            raise ValueError(f"Task {self.name}: metric={self.metric!r} not in {METRICS}")
        if (self.kind == "classification") != (self.labels is not None):
            raise ValueError(f"Task {self.name}: classification tasks (only) have labels")


def _t(*args, **kw) -> Task:
    return Task(*args, **kw)


_TASK_LIST = (
    _t("fpb", "classification", SENTIMENT3, "accuracy", NEWS_INSTRUCTION, "finlora/test/fpb_test.jsonl", True,
       "Financial PhraseBank (Sentences_50Agree) news sentiment. Test: FinLoRA's file (1212), which FinGPT's "
       "train_test_split(test_size=0.25, seed=42) over the 4846 sentences reproduces exactly. Train: the rest, "
       "minus 5 sentences whose text also occurs in the test split (3629)."),
    _t("fiqa", "classification", SENTIMENT3, "accuracy", NEWS_INSTRUCTION, "finlora/test/fiqa_test.jsonl", True,
       "FiQA-2018 task 1 headline/post sentiment ('news' / 'tweet' instruction). Test: FinLoRA's file (235 rows, "
       "233 sentences). Train: the other 878 scored sentences, label from the mean aspect score with FinGPT's "
       "thresholds (< -0.1 negative, < 0.1 neutral, else positive)."),
    _t("tfns", "classification", SENTIMENT3, "accuracy", TWEET_INSTRUCTION, "tfns/sent_valid.csv", True,
       "Twitter Financial News Sentiment. Test rebuilt from sent_valid.csv (2388), train from sent_train.csv (9543), "
       "with the dataset's own mapping 0=bearish->negative, 1=bullish->positive, 2=neutral. FinLoRA's "
       "tfns_test.jsonl has the same inputs but swaps positive/neutral: see tfns_finlora_labels."),
    _t("tfns_finlora_labels", "classification", SENTIMENT3, "accuracy", TWEET_INSTRUCTION,
       "finlora/test/tfns_test.jsonl", True,
       "TFNS with FinLoRA's (wrong) labels, for comparison with the paper: test = FinLoRA's tfns_test.jsonl as "
       "shipped, train = sent_train.csv mapped like FinLoRA's script (0 negative, 1 neutral, 2 positive). Its "
       "'positive' rows are neutral tweets and its 'neutral' rows are bullish ones.", variant_of="tfns"),
    _t("nwgi", "classification", NWGI_LABELS, "accuracy", NWGI_INSTRUCTION, "finlora/test/nwgi_test.jsonl", False,
       "News with GPT instructions, 7 sentiment grades (4047 test rows). Only a test split is available; "
       "nwgi_to_3class() folds the grades into negative/neutral/positive."),
    _t("headline", "classification", HEADLINE_LABELS, "accuracy", HEADLINE_INSTRUCTION,
       "headline_gold/gold-dataset-sinha-khandait.csv", True,
       "APPROXIMATION of FinGPT's headline task: yes/no questions about gold-news headlines, built from the "
       "Sinha & Khandait gold CSV (10570 headlines x 7 questions; FinGPT used 11412 headlines x 9 questions from a "
       "file we do not have). Split by headline (about 20 % test, by a hash of the headline text). See data/README.md."),
    _t("ner", "classification", NER_LABELS, "accuracy", NER_INSTRUCTION, "finlora/test/ner_test.jsonl", True,
       "Entity-type classification over SEC-filing sentences (person/organization/location). Test: FinLoRA's file "
       "(3502 rows = FinGPT's construction over FIN3, replayable except the random option order). Train: built "
       "from FIN5, one row per distinct entity of each sentence with its own type (802 rows)."),
    _t("xbrl_term", "generation", None, "bertscore", "Explain this XBRL term briefly in one sentence: {term}. Answer:",
       "finlora/test/xbrl_term_test.jsonl", True,
       "XBRL terminology: one-sentence definition of a US-GAAP term. FinLoRA's train (5856, minus 6 'nan' rows) "
       "and test (651) files.", prompt_format="native"),
    _t("finer", "extraction", None, "batched_accuracy", "You are XBRL expert. Here is a list of US GAAP tags "
       "options: ... Answer with the US GAAP tags:", "finlora/test_older/finer_test_batched.jsonl", False,
       "FiNER-139 XBRL tagging, batched prompt (501 rows, FinLoRA 2025-03-17 prompt version). Test only.",
       prompt_format="native"),
    _t("fnxl", "extraction", None, "batched_accuracy", "You are XBRL expert. Choose the best XBRL US GAAP tag for "
       "each highlighted entity ...", "finlora/test_older/fnxl_test_batched.jsonl", False,
       "FNXL XBRL tagging, batched prompt (33 rows, older FinLoRA version). Test only.", prompt_format="native"),
    _t("xbrl_tags", "extraction", None, "accuracy", "You are a knowledgeable XBRL assistant ... XBRL file ... "
       "Question ... Answer:", "finlora/test_older/xbrl_xbrl_tags_test.jsonl", False,
       "XBRL extraction: which US-GAAP tag holds a value (108 rows, older FinLoRA version). Test only.",
       prompt_format="native"),
    _t("xbrl_value", "extraction", None, "accuracy", "You are a knowledgeable XBRL assistant ... XBRL file ... "
       "Question ... Answer:", "finlora/test_older/xbrl_value_test.jsonl", False,
       "XBRL extraction: the value of a fact (104 rows, older FinLoRA version). Test only.", prompt_format="native"),
    _t("xbrl_formula", "extraction", None, "accuracy", "You are a knowledgeable XBRL assistant ... XBRL file ... "
       "Question ... Answer:", "finlora/test_older/xbrl_formula_test.jsonl", False,
       "XBRL extraction: the formula with values filled in (104 rows, older FinLoRA version). Test only.",
       prompt_format="native"),
    _t("formula", "generation", None, "accuracy", "Use formula {name} to answer the question. Answer with a "
       "numerical answer with 2 decimal places ... Question: ... Answer:", "finlora/test/formula_test.jsonl", True,
       "Financial formula calculations with a numeric answer. FinLoRA's train (800) and test (200) files.",
       prompt_format="native"),
    _t("financebench", "generation", None, "bertscore", "Answer the following question very briefly using scanned "
       "text from pages. ... Answer:", "finlora/test/financebench_test.jsonl", True,
       "FinanceBench questions over 10-K page text. FinLoRA's train (86) and test (43) files.",
       prompt_format="native"),
)
TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}
# Tasks registered from a user's files (data.register_files), by name; never a built-in name.
FILE_TASKS: dict[str, Task] = {}
SENTIMENT_TASKS = ("fpb", "fiqa", "tfns", "nwgi")


def task_names(kind: str | None = None, include_variants: bool = False) -> list[str]:
    """Task names in registry order, optionally of one kind. Variants (tfns_finlora_labels) only on request."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)} or None")
    return [t.name for t in _TASK_LIST
            if (kind is None or t.kind == kind) and (include_variants or t.variant_of is None)]


def get_task(name: str) -> Task:
    try:
        return TASKS[name] if name in TASKS else FILE_TASKS[name]
    except (KeyError, TypeError):
        own = f"; tasks from files: {', '.join(FILE_TASKS)}" if FILE_TASKS else ""
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}{own} (your own data: "
                         "train_file / --train-file, or data.register_files)") from None


def format_prompt(instruction: str, text: str) -> str:
    """FinLoRA's prompt: ``Instruction: {instruction}\\nInput: {text}\\nAnswer: ``."""
    return f"{PROMPT_INSTRUCTION}{instruction}{PROMPT_INPUT}{text}{PROMPT_ANSWER}"


def split_prompt(context: str) -> tuple[str, str]:
    """Inverse of :func:`format_prompt`: ``(instruction, input_text)``.

    A context without an ``Input:`` line (FinGPT omits it for empty inputs) gives ``input_text == ""``.
    Raises ValueError for contexts not in the Instruction/Input/Answer layout (the ``native`` XBRL, formula and
    financebench prompts).
    """
    if not (context.startswith(PROMPT_INSTRUCTION) and context.endswith(PROMPT_ANSWER)):
        raise ValueError("context is not in FinLoRA's 'Instruction: ...\\nInput: ...\\nAnswer: ' format: "
                         f"{context[:60]!r}...")
    body = context[len(PROMPT_INSTRUCTION):-len(PROMPT_ANSWER)]
    i = body.find(PROMPT_INPUT)
    if i < 0:
        return body, ""
    return body[:i], body[i + len(PROMPT_INPUT):]


_PUNCT = " \t\r\n.,;:!\"'`*"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip(_PUNCT)).lower()


def normalize_label(task: str, text: str) -> str | None:
    """Map an answer to one of the task's labels, ignoring case, surrounding whitespace/punctuation and repeated
    spaces (``" Positive."`` -> ``"positive"``). None if it is not a label, or the task has no label set."""
    labels = get_task(task).labels
    if labels is None or not isinstance(text, str):
        return None
    key = _norm(text)
    for label in labels:
        if _norm(label) == key:
            return label
    return None


def nwgi_to_3class(label: str) -> str:
    """Fold an NWGI grade into negative/neutral/positive (``"mildly negative"`` -> ``"negative"``)."""
    canon = normalize_label("nwgi", label)
    if canon is None:
        raise ValueError(f"{label!r} is not an NWGI label; expected one of {', '.join(NWGI_LABELS)}")
    return canon.split()[-1]

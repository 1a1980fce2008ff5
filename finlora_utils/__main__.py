"""One entry point for the kit: ``python -m finlora_utils <verb> [args]`` (or the ``finlora`` console script).

Each verb hands its arguments to one module's ``main(argv)``; ``<verb> --help`` shows that module's options.
"""
from __future__ import annotations

import importlib
import sys

# verb -> (module whose main(argv) runs it, one line of help[, arguments put before the user's]).
# A module is imported only when its verb runs.
VERBS = {
    "train": ("finlora_utils.train", "finetune a LoRA adapter (a built-in task, or your data: --train-file)"),
    "parallel": ("finlora_utils.parallel", "train under torchrun with a timeout: --parallel ddp | pipeline, --nproc N"),
    "evaluate": ("finlora_utils.evaluate", "evaluate runs (their results JSON) or a zero-shot base model"),
    "predict": ("finlora_utils.predict", "label new text with a run, an adapter or a merged model"),
    "sweep": ("finlora_utils.sweep", "run a grid of notebook parameters (grids/*.yaml)"),
    "merge": ("finlora_utils.merge", "merge an adapter into its base model (a plain transformers folder)"),
    "export": ("finlora_utils.export", "export a merged model (export gguf ...)"),
    "validate": ("finlora_utils.data.validate", "check a data file: FinLoRA JSONL or CSV/TSV (FILE:LINE errors)"),
    "estimate": ("finlora_utils.memory", "plan training memory for a model, precision and LoRA shape", ["estimate"]),
    "study": ("finlora_utils.study", "run the study notebooks with a preset (all | run NOTEBOOK)"),
}
PROG = "python -m finlora_utils"


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"usage: {PROG} <verb> [args]   ({PROG} <verb> --help for a verb's options)", "", "verbs:"]
    lines += [f"  {v:<{width}}  {spec[1]}" for v, spec in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; expected one of {', '.join(VERBS)}", file=sys.stderr)
        return 2
    module, _, *prefix = VERBS[verb]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:   # a missing dependency inside the module is a real error
            raise
        print(f"error: {verb}: {module} is not part of this installation", file=sys.stderr)
        return 2
    entry = getattr(mod, "main", None)
    if entry is None:
        print(f"error: {verb}: {module} has no main(argv)", file=sys.stderr)
        return 2
    return int(entry([*(prefix[0] if prefix else []), *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())

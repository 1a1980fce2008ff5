"""``python -m finlora_utils.data {validate|fetch|sample|tasks}``."""
from __future__ import annotations

import sys

from ..errors import cli_entry


def _fetch(argv: list[str]) -> int:
    import argparse

    from . import loader, sources
    from .tasks import TASKS

    ap = argparse.ArgumentParser(prog="python -m finlora_utils.data fetch",
                                 description="Download task files into the cache (data/cache/datasets/).")
    ap.add_argument("tasks", nargs="*", help="task names (default: all)")
    args = ap.parse_args(argv)
    names = args.tasks or list(TASKS)
    rels = []
    try:
        for n in names:
            for split in ("test", "train"):
                try:
                    rels += [r for r in loader.files_for(n, split) if r not in rels]
                except loader.NoSplitError:
                    pass
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = 0
    for rel in rels:
        try:
            p, notes = sources.resolve(rel)
        except sources.ChecksumError as e:
            p, notes = None, [str(e)]
        print(f"{rel}: {p}" if p else f"{rel}: FAILED ({'; '.join(notes)})")
        bad += p is None
    return 1 if bad else 0


def _sample(argv: list[str]) -> int:
    import argparse

    from . import sample, sources

    ap = argparse.ArgumentParser(prog="python -m finlora_utils.data sample",
                                 description="Write the synthetic sample set.")
    ap.add_argument("--out", default=None, help=f"directory (default {sources.sample_dir()})")
    args = ap.parse_args(argv)
    print(sample.generate(args.out or sources.sample_dir()))
    return 0


def _tasks(argv: list[str]) -> int:
    from .tasks import TASKS

    for t in TASKS.values():
        labels = "/".join(t.labels) if t.labels else "-"
        print(f"{t.name:20s} {t.kind:14s} {t.metric:16s} train={'yes' if t.has_train else 'no ':3s} {labels}")
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"fetch": _fetch, "sample": _sample, "tasks": _tasks}
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n  validate FILE [--task TASK] [--text-column C] [--label-column C] [--no-tokens] "
              "[--strict]\n  fetch [TASK ...]\n"
              "  sample [--out DIR]\n  tasks", file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "validate":
        from .validate import main as validate_main

        return validate_main(rest)
    if cmd in commands:
        return commands[cmd](rest)
    print(f"error: unknown command {cmd!r}; expected validate, fetch, sample or tasks", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

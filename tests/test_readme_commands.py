"""Every `python -m finlora_utils ...` command the README shows parses with that command's own options: a renamed
or removed flag fails here, not in a newcomer's terminal. Parsing only: each command stops where its parser
returns, before any work."""
from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from finlora_utils.__main__ import VERBS
from finlora_utils.__main__ import main as entry_main

README = Path(__file__).resolve().parents[1] / "README.md"
CMD = re.compile(r"python\s+-m\s+(finlora_utils(?:\.[a-z_.]+)?)\b(.*)")


def readme_commands() -> list[tuple[str, str]]:
    """(module, argument string) of every command in a code block or an inline code span."""
    text = README.read_text(encoding="utf-8")
    fence = re.compile(r"```[a-z]*\n(.*?)```", flags=re.S)
    spans = []
    for block in fence.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)   # continuation lines
        spans += joined.splitlines()
    inline = re.findall(r"`([^`]*python\s+-m\s+finlora_utils[^`]*)`", fence.sub("", text))
    spans += [re.sub(r"\s+", " ", s) for s in inline]   # an inline command may wrap across lines
    found = []
    for s in spans:
        m = CMD.search(s)
        args = re.sub(r"\s#.*", "", m.group(2)) if m else ""   # a shell comment after the command
        if args.strip() and "<verb>" not in args:   # not a module named in prose, nor the verbs' pattern
            args = args.replace("[", " ").replace("]", " ")  # optional parts shown in brackets are options too
            args = re.sub(r"<[^>]+>", "x", args)              # <task>, <run_id>: placeholders
            args = re.sub(r"(^|\s)\.\.\.(?=\s|$)", " ", args)   # "..." for the flags the text gives elsewhere
            found.append((m.group(1), args.strip()))
    return list(dict.fromkeys(found))


class Parsed(Exception):
    pass


@pytest.fixture
def stop_at_parse(monkeypatch):
    """Every parser returns what it would parse and what it did not recognise, then stops the command."""
    def parse(self, args=None, namespace=None):
        self.allow_abbrev = False   # a README flag must be the flag, not a prefix argparse would complete
        ns, extra = argparse.ArgumentParser.parse_known_args(self, args, namespace)
        raise Parsed(ns, extra)

    def parse_intermixed(self, args=None, namespace=None):
        self.allow_abbrev = False
        ns, extra = argparse.ArgumentParser.parse_known_intermixed_args(self, args, namespace)
        raise Parsed(ns, extra)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_intermixed_args", parse_intermixed)


def test_the_readme_shows_the_commands_this_test_reads():
    cmds = readme_commands()
    verbs = {a.split()[0] for m, a in cmds if m == "finlora_utils" and a and not a.startswith("-")}
    assert len(cmds) >= 25 and verbs >= {"train", "parallel", "evaluate", "predict", "merge", "export", "validate",
                                         "estimate", "sweep", "study"}, (len(cmds), verbs)


@pytest.mark.parametrize("module,args", readme_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_a_readme_command_parses(module, args, stop_at_parse, capsys):
    argv = shlex.split(args)
    if module == "finlora_utils" and argv[:1] == ["--help"]:
        assert entry_main(argv) == 0 and "verbs:" in capsys.readouterr().out
        return
    if module == "finlora_utils":
        assert argv and argv[0] in VERBS, f"README: python -m finlora_utils {args}: no such verb"
        main = lambda: entry_main(argv)   # noqa: E731
    else:
        mod = importlib.import_module(module)
        if not hasattr(mod, "main"):   # a package: `python -m` runs its __main__
            mod = importlib.import_module(f"{module}.__main__")
        main = lambda: mod.main(argv)   # noqa: E731
    with pytest.raises(Parsed) as got:
        main()
    ns, extra = got.value.args
    assert extra == [], f"README: python -m {module} {args}: not options of the command: {extra}"


def test_the_check_fails_on_a_flag_the_command_does_not_have(stop_at_parse):
    with pytest.raises(Parsed) as got:
        entry_main(["train", "--task", "fpb", "--no-such-flag", "1"])
    assert got.value.args[1] == ["--no-such-flag", "1"]
    with pytest.raises(Parsed) as got:   # a prefix of a real flag (--max-train-samples) is no flag either
        entry_main(["train", "--max-train", "4"])
    assert got.value.args[1] == ["--max-train", "4"]

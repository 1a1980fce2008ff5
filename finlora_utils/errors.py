"""How the command-line entry points answer a user's mistake: ``error: <message>`` on stderr, exit status 2.

"The kit's own errors" are the exception classes defined in this package (ConfigError, ModelLoadError,
DataError, ResultsError, EvalError, CheckpointError, ...), whose messages name the file or parameter and
what is expected, plus OSError (a path that is missing, a file where a folder must be). Anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys
import warnings

PACKAGE = __name__.split(".")[0]


def is_kit_error(e: BaseException) -> bool:
    return isinstance(e, OSError) or any(c.__module__.split(".")[0] == PACKAGE for c in type(e).__mro__)


def cli_entry(main):
    """Decorate ``main(argv) -> int``: a kit error becomes ``error: ...`` on stderr and exit status 2; Ctrl-C one
    line and 130 (the shell's code for SIGINT), not a traceback of wherever the loop happened to be."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        shown = warnings.formatwarning
        # a warning to a user is its message: not the kit's file, line and source line, as Python prints it
        warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C): files are written whole or not at all; a training run resumes from its "
                  "last checkpoint (save_every) when the same command runs again", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - re-raised unless it is the kit's own
            if not is_kit_error(e):
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            warnings.formatwarning = shown
    return wrapper

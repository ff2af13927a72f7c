"""Command lines called in the test process, as a fresh process would see them.

``run_main(main, *args)`` calls a command line's ``main(argv)`` (what ``python -m <module>``
runs) and returns a ``subprocess.CompletedProcess``: the exit code (a ``SystemExit``, as
argparse raises, included), stdout, and on stderr the prints, log records (the root
logger starts unconfigured, so the command's own ``logging.basicConfig`` applies), warnings
and an uncaught exception's traceback (exit code 1, as the interpreter does). A test that
needs no process of its own does not pay a second interpreter re-importing torch.
"""
from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import traceback
import warnings
from collections.abc import Callable, Sequence


def run_main(main: Callable[[Sequence[str]], int | None], *args: str) -> subprocess.CompletedProcess:
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    code: object = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = exit_.code
            except Exception:  # what the interpreter prints before exiting with 1
                err.write(traceback.format_exc())
                code = 1
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, exit code 1
        err.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess([getattr(main, "__module__", "main"), *args], code, out.getvalue(), err.getvalue())

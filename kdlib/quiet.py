"""Keeping the exporters' and runtimes' own diagnostics out of a reader's output.

torch.export, ONNX Runtime and ExecuTorch print and log a great deal that is meant for their
developers (deprecation notices, partial graphs on failure, thread-pool messages from C++).
`held_diagnostics` holds log records and Python's stderr back and replays them only when
something went wrong; `native_stderr_silenced` does the same for file descriptor 2, where
C++ code writes; `quiet_import` imports an ExecuTorch module without its one notice.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import tempfile


class _HoldRecords(logging.Filter):
    """A logging filter that keeps records back instead of letting them through."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record):
        self.records.append(record)
        return False


class _Held:
    """What `held_diagnostics` keeps back; set `.replay = False` to discard it."""

    replay = True


@contextlib.contextmanager
def held_diagnostics(*logger_names: str, drop: str | None = None):
    """Hold back the records of the named loggers and what Python code prints to
    stderr; afterwards replay them (all log records but those whose message
    contains `drop`), unless the block set `.replay = False` on what it got."""
    state, printed = _Held(), io.StringIO()
    holds = {name: _HoldRecords() for name in logger_names}
    for name, hold in holds.items():
        logging.getLogger(name).addFilter(hold)
    try:
        with contextlib.redirect_stderr(printed):
            yield state
    finally:
        for name, hold in holds.items():
            logger = logging.getLogger(name)
            logger.removeFilter(hold)
            for record in hold.records if state.replay else ():
                if drop is None or drop not in record.getMessage():
                    logger.handle(record)
        if state.replay:
            sys.stderr.write(printed.getvalue())


def quiet_import(name: str):
    """Import an ExecuTorch module. Importing it registers a torchao enum with
    torch's pytree, which logs a deprecation notice meant for torchao's
    developers (not for our readers); that one notice is dropped."""
    with held_diagnostics("torch.utils._pytree", drop="register_constant() on Enum subclasses"):
        return importlib.import_module(name)


class native_stderr_silenced:
    """Context manager: hold back the runtimes' own messages while it is open
    (ExecuTorch prints "Resetting threadpool", "Failed to open midr file", ...).
    They reach file descriptor 2 from C++, or Python's `sys.stderr` when the
    runtime routes its log through Python (it does inside Jupyter), so both are
    held. If the block raises, the held text is written out after it closes,
    so nothing is lost when something fails.
    """

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._held = tempfile.TemporaryFile()  # unnamed: nothing to clean up
        os.dup2(self._held.fileno(), 2)
        self._printed = io.StringIO()
        self._redirect = contextlib.redirect_stderr(self._printed)
        self._redirect.__enter__()
        return self

    def __exit__(self, exc_type, *exc):
        self._redirect.__exit__(exc_type, *exc)
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if exc_type is not None:
            self._held.seek(0)
            sys.stderr.write(self._held.read().decode("utf-8", "replace") + self._printed.getvalue())
        self._held.close()
        return False

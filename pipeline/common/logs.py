"""The console and log file of a job: library code logs, this module decides where it goes.

    configure_logging()                                  # INFO lines on stdout, as plain text
    configure_logging(log_file="outputs/run/job.log")    # and everything (DEBUG) in a file
    with logging_to_file("runs/cell/train.log"):         # a quiet block: file gets it all,
        ...                                              # the console only warnings
    ensure_logging()      # configure unless a handler exists (init_ray; train_loop: worker=True)

Every module under ``pipeline/`` logs through ``logging.getLogger(__name__)``, so all of them
sit under the ``pipeline`` logger configured here. The console shows each message as the bare
line that the jobs printed before there was logging (no level, no time), on ``sys.stdout``
as it is at the time of writing (pytest's capture and ``redirect_stdout`` see it).

:func:`pipeline.common.ray_utils.init_ray` calls :func:`ensure_logging`, so every job gets
this console without configuring anything; an application that configured ``logging`` itself
keeps its own set-up. The training loop calls ``ensure_logging(worker=True)`` in each Ray Train
worker, so its progress lines reach the driver's stdout as they did when they were prints.
With ``log_file``, the file also receives the records of the ``ray`` logger and of the Ray
loggers that exist by then (Ray Data's, configured when ``ray.data`` is imported); Ray's
console output stays as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = [
    "LIBRARY_LOGGER",
    "configure_logging",
    "console_to_file",
    "ensure_logging",
    "logging_to_file",
]

LIBRARY_LOGGER = "pipeline"
_ENGINE_LOGGER = "ray"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time, not at creation time."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler assigns it; stdout is looked up instead
        pass


def _ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_pipeline_logs", False)


def _engine_loggers() -> list[logging.Logger]:
    """``ray`` and the Ray loggers below it that do not pass records up (Ray Data's, which it
    configures when ``ray.data`` is imported, ...): each needs the file handler itself."""
    loggers = [logging.getLogger(_ENGINE_LOGGER)]
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith(_ENGINE_LOGGER + ".") and isinstance(logger, logging.Logger):
            if not logger.propagate:
                loggers.append(logger)
    return loggers


def _remove_ours(logger: logging.Logger) -> None:
    for handler in [h for h in logger.handlers if _ours(h)]:
        logger.removeHandler(handler)
        handler.close()


def configure_logging(
    level: int | str = logging.INFO, log_file: str | os.PathLike | None = None
) -> None:
    """Console at ``level`` for the ``pipeline`` logger; everything also to ``log_file``.

    Calling it again replaces what an earlier call installed (no duplicated lines).
    """
    library, engines = logging.getLogger(LIBRARY_LOGGER), _engine_loggers()
    for logger in (library, *engines):
        _remove_ours(logger)
    console = _StdoutHandler()
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setLevel(logging.DEBUG)
        file.setFormatter(logging.Formatter(_FILE_FORMAT))
        file._pipeline_logs = True
        for engine in engines:  # Ray's own chatter (its console handlers stay)
            engine.addHandler(file)
        handlers.append(file)
    for handler in handlers:
        handler._pipeline_logs = True
        library.addHandler(handler)
    library.setLevel(logging.DEBUG if log_file is not None else level)
    # Our handlers show every record once; a root handler (e.g. Ray Train's) would repeat it.
    library.propagate = False


def ensure_logging(*, worker: bool = False) -> bool:
    """:func:`configure_logging` unless some handler already receives ``pipeline`` records.

    Returns whether it configured. Leaves alone an application's own ``logging`` set-up and
    pytest's capture. ``worker=True`` is for Ray worker processes (a Ray Train worker): their
    root handlers are Ray's own (Ray Train sends the root logger to stderr), so only handlers
    of the ``pipeline`` logger itself count; the console then is the worker's stdout, which
    Ray forwards to the driver's stdout, where the trainer's lines appeared as prints.
    """
    library = logging.getLogger(LIBRARY_LOGGER)
    if library.handlers if worker else library.hasHandlers():
        return False
    configure_logging()
    return True


@contextlib.contextmanager
def logging_to_file(
    log_file: str | os.PathLike, *, console_level: int | str = logging.WARNING
) -> Iterator[None]:
    """Within the block every ``pipeline`` record goes to ``log_file``, the console shows only
    ``console_level`` and above; the previous set-up comes back afterwards."""
    library, engines = logging.getLogger(LIBRARY_LOGGER), _engine_loggers()
    saved = {logger: logger.handlers[:] for logger in (library, *engines)}
    saved_level, saved_propagate = library.level, library.propagate
    for logger, handlers in saved.items():  # detached, not closed: they come back afterwards
        for handler in handlers:
            if logger is library or _ours(handler):
                logger.removeHandler(handler)
    configure_logging(console_level, log_file)
    try:
        yield
    finally:
        for logger in (library, *_engine_loggers()):
            _remove_ours(logger)
        for logger, handlers in saved.items():
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
        library.setLevel(saved_level)
        library.propagate = saved_propagate


@contextlib.contextmanager
def console_to_file(log_file: str | os.PathLike) -> Iterator[TextIO]:
    """Within the block everything this process writes to its stdout and stderr goes to
    ``log_file`` (appended): Ray's progress bars, the lines Ray forwards from its workers,
    the ``pipeline`` log records. Yields a text stream on the console as it was, for the few
    lines the user should see. Redirects the file descriptors, so output of C extensions and
    of anything that looked up ``sys.stdout`` earlier is caught too."""
    path = Path(log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8")
    saved_streams = sys.stdout, sys.stderr
    with open(path, "ab", buffering=0) as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    # Python-level writers too, in case sys.stdout is not descriptor 1 (a test's capture)
    redirected = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    sys.stdout = sys.stderr = redirected
    try:
        yield console
    finally:
        sys.stdout, sys.stderr = saved_streams
        redirected.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)
        console.close()

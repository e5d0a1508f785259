"""What the terminal shows: one line per stage, a bar for training and one for evaluation.

Everything else (other libraries' progress bars and warnings, Prefect's engine lines, the
Trainer's per-step dictionaries, our own INFO lines) still goes to the Prefect UI, MLflow and
a log file in the workspace; `freshtune -v ...` shows it all on the terminal as before. The
switch is an environment variable so that it reaches the code that draws the two bars.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

QUIET = "FRESHTUNE_QUIET"


def quiet() -> bool:
    return os.environ.get(QUIET) == "1"


@contextmanager
def terminal(log_file: Path, verbose: bool = False) -> Iterator[None]:
    """A quiet terminal while the block runs (unless `verbose`); the full log is appended to
    `log_file`. Everything is put back afterwards (the CLI's tests run in one process)."""
    if verbose:
        yield
        return
    import prefect  # noqa: F401  (its logging set up first: ours goes on top, then comes off)

    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    undo = [_set_env(QUIET, "1"), _silence_consoles(), _quiet_libraries()]
    root, level = logging.getLogger(), logging.getLogger().level
    handlers = [to_file, StageLines()]
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings become log records: the file, not the terminal
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for handler in handlers:
            root.removeHandler(handler)
        to_file.close()
        root.setLevel(level)
        for restore in reversed(undo):
            restore()
        _quiet_exit()


def _quiet_exit() -> None:
    """Prefect stops its temporary server from an exit hook and logs that on the terminal,
    after the quiet block is over: that one line is dropped (the server's start and stop are
    Prefect's business, not the user's)."""
    prefect_log = logging.getLogger("prefect")
    if not any(isinstance(f, _ServerStopLine) for f in prefect_log.filters):
        prefect_log.addFilter(_ServerStopLine())


class _ServerStopLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Stopping temporary server")


def _set_env(name: str, value: str) -> Callable[[], None]:
    before = os.environ.get(name)
    os.environ[name] = value
    return lambda: os.environ.pop(name) if before is None else os.environ.update({name: before})


def _silence_consoles() -> Callable[[], None]:
    """Prefect's console handlers (engine lines, our INFO lines, warnings) only for the
    critical; the API handler still sends every line to the Prefect UI."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    consoles = [
        h
        for lg in loggers
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(logging.CRITICAL)
    return lambda: [h.setLevel(v) for h, v in zip(consoles, levels)] and None


def _quiet_libraries() -> Callable[[], None]:
    """Other libraries' bars (loading weights, saving datasets) and HTTP lines off."""
    import datasets
    import mlflow  # noqa: F401  (its import sets its logger to INFO: import first, then quiet it)
    import transformers

    chatty = [logging.getLogger(name) for name in ("httpx", "mlflow")]
    levels = [lg.level for lg in chatty]
    verbosity = transformers.logging.get_verbosity()
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()

    def restore() -> None:
        for lg, level in zip(chatty, levels):
            lg.setLevel(level)
        datasets.enable_progress_bars()
        transformers.logging.enable_progress_bar()
        transformers.logging.set_verbosity(verbosity)

    return restore


class StageLines(logging.Handler):
    """One line per task run when Prefect logs its end: the stage, its seconds (since the
    previous stage ended: a cycle runs its stages one after another) and its result (the last
    line our task code logged) or, when it did not complete, its state."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._since = time.monotonic()
        self._said = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name.startswith(("tasks.", "flows.")):
            self._said = message.splitlines()[0] if message else ""
        elif record.name == "prefect.flow_runs" and message.startswith("Beginning"):
            self._since, self._said = time.monotonic(), ""
        elif record.name == "prefect.task_runs" and message.startswith("Finished in state"):
            self._stage_line(record, message.removeprefix("Finished in state").strip())

    def _stage_line(self, record: logging.LogRecord, state: str) -> None:
        now = time.monotonic()
        stage = str(getattr(record, "task_run_name", "")).rsplit("-", 1)[0]
        done = state.startswith("Completed")
        result = self._said if done else state.split("(")[0]
        if done and not result and now - self._since < 1:
            return  # bookkeeping (a lookup, a tag): the line would say nothing
        mark = " " if done else "!"
        sys.stdout.write(f"{mark} {stage:<24}{now - self._since:>6.0f} s  {result[:100]}\n")
        sys.stdout.flush()
        self._since, self._said = now, ""

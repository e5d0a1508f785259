"""`freshtune` commands in processes that can be killed, without paying the imports each time.

A cycle killed with SIGKILL must run in a process of its own. Importing torch, transformers,
peft and Great Expectations costs about 20 s here, so the processes are forked from a
forkserver that imported them once (as gunicorn preloads an app); each command then costs
only its own work. The server's environment (PREFECT_API_URL ...) is fixed when it starts.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

PRELOAD = [
    "torch",
    "transformers",
    "peft",
    "great_expectations",
    "mlflow",
    "datasets",
    "flows.refresh",
    "freshtune.cli",
]


def forkserver() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _cli(args: list[str], env: dict[str, str], log: str) -> None:
    os.environ.update(env)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(out, 1)
    os.dup2(out, 2)
    from freshtune.cli import app

    try:
        app(args, prog_name="freshtune")
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    os._exit(0)


def run_cli(
    context: Any, args: list[str], log: Path, env: dict[str, str] | None = None, timeout=600
) -> int:
    """Run `freshtune ARGS` in a forked process; its exit code (-9 when SIGKILLed)."""
    process = context.Process(target=_cli, args=(args, env or {}, str(log)))
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"freshtune {' '.join(args)} ran past {timeout} s; see {log}")
    return process.exitcode

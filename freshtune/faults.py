"""Fault injection for the fault-matrix tests: `FRESHTUNE_FAULT=<point>:<fault>[,...]`.

Each stage of the cycle is a named point, passed right after the stage's work is done and
recorded (the worst moment to die: its effects exist, the next stage has not seen them).
Faults: `kill` (SIGKILL: no hook, no `finally`, as when a node is lost), `raise` (an error
the flow sees), `nospace` (ENOSPC, as from a full disk), `nan` (training only: a weight
becomes NaN, as from a bad batch or a hardware fault). Unset, every point is a no-op.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

ENV = "FRESHTUNE_FAULT"
FAULTS = ("kill", "raise", "nospace", "nan")
POINTS = (
    "stage",
    "validate",
    "curate",
    "mix",
    "checkpoint",
    "train",
    "evaluate",
    "register",
    "review",
    "promote",
    "record",
)
F = TypeVar("F", bound=Callable[..., Any])


class InjectedFault(RuntimeError):
    """The error a `raise` fault throws (only ever under FRESHTUNE_FAULT)."""


def armed(point: str) -> str | None:
    """The fault set for `point`, or None."""
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        where, _, fault = item.strip().partition(":")
        if where not in POINTS or fault not in FAULTS:
            raise ValueError(f"{ENV}={item!r}: use <point>:<fault>, points {POINTS}, {FAULTS}")
        if where == point:
            return fault
    return None


def reach(point: str) -> None:
    """Inject the fault set for `point`, if any."""
    fault = armed(point)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "raise":
        raise InjectedFault(f"injected fault after stage {point!r}")
    if fault == "nospace":
        raise OSError(errno.ENOSPC, f"No space left on device (injected after {point!r})")


def after(point: str) -> Callable[[F], F]:
    """Decorator: `reach(point)` once the wrapped stage has returned."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            reach(point)
            return result

        return run  # type: ignore[return-value]

    return wrap

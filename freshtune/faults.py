"""Fault injection for the fault-matrix tests: `FRESHTUNE_FAULT=<point>:<fault>[,...]`.

Each stage of the cycle is a named point, passed right after the stage's work is done and
recorded (the worst moment to die: its effects exist, the next stage has not seen them).
Faults: `kill` (SIGKILL: no hook, no `finally`, as when a node is lost), `raise` (an error
the flow sees), `nospace` (ENOSPC, as from a full disk), `nan` (training only: a weight
becomes NaN, as from a bad batch or a hardware fault). Unset, every point is a no-op.

In the same process a test may also attach an action to a point (`when`), to take a real
server away at exactly that moment.
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
    "alias",  # inside promotion: `champion` moved, the version not yet tagged as served
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


_ACTIONS: dict[str, Callable[[], None]] = {}


def set_for(point: str) -> bool:
    """Whether a fault or an action waits at `point` (hooks that cost anything check it)."""
    return point in _ACTIONS or armed(point) is not None


def when(point: str, action: Callable[[], None]) -> None:
    """Run `action` once, in this process, the next time `point` is reached."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; points: {POINTS}")
    _ACTIONS[point] = action


def reach(point: str) -> None:
    """Run the action attached to `point`, then inject the fault set for it, if any."""
    if (action := _ACTIONS.pop(point, None)) is not None:
        action()
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

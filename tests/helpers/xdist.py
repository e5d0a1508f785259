"""How `make test` shares the suite between its pytest-xdist workers.

A module's tests stay in one worker, so their module fixtures start servers once; and the
modules on the deployed stack (tests/deployments/conftest.py `stack`, a session fixture and so
built once per worker) go to one worker together. pytest-xdist's own `loadgroup` would do it
with marks, but with pytest 9 its marks never reach the scheduler (it renames a node through
an attribute pytest 9 no longer reads), so the grouping is a scheduler of our own.
"""

from __future__ import annotations

from typing import Any

STACK_MODULES = frozenset(
    {
        "tests/deployments/test_stack.py",
        "tests/deployments/test_suspend.py",
        "tests/deployments/test_ui.py",
    }
)


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def scheduler(config: Any, log: Any) -> Any:
    """Units of work: a module, or all of STACK_MODULES; handed out in collection order
    (`--no-loadscope-reorder`), so the long deployment modules, collected early, start first."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = module_of(nodeid)
            return "stack" if module in STACK_MODULES else module

    return ModuleScheduling(config, log)

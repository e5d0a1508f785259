"""Every flow and deployment module imports, fast, without pulling in torch."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import deployments
import flows

MODULES = [
    m.name
    for pkg in (flows, deployments)
    for m in pkgutil.iter_modules(pkg.__path__, f"{pkg.__name__}.")
]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str):
    importlib.import_module(name)


def test_flows_do_not_import_torch_or_transformers_at_import_time():
    code = (
        "import sys, flows.refresh, freshtune.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

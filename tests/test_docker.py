"""Docker cannot run here: check the files parse and reference what exists."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT / "docker").glob("*Dockerfile"))
INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "RUN",
    "WORKDIR",
    "COPY",
    "ADD",
    "USER",
    "VOLUME",
    "HEALTHCHECK",
    "CMD",
    "ENTRYPOINT",
    "EXPOSE",
    "LABEL",
    "SHELL",
    "STOPSIGNAL",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """Logical lines (continuations joined) as (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_there_is_a_worker_image():
    assert [p.name for p in DOCKERFILES] == ["worker.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_well_formed_and_pinned(path: Path):
    parsed = instructions(path)
    assert all(op.upper() in INSTRUCTIONS for op, _ in parsed), parsed
    assert parsed[0][0] == "FROM" and ":" in parsed[0][1] and "latest" not in parsed[0][1]
    ops = [op for op, _ in parsed]
    assert "CMD" in ops or "ENTRYPOINT" in ops
    assert "USER" in ops and "HEALTHCHECK" in ops


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_no_secret_is_baked_in(path: Path):
    for op, args in instructions(path):
        if op == "COPY":
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source} does not exist"
        if op in {"ENV", "ARG"}:
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)\w*=\S", args), args


def test_dockerignore_keeps_state_and_venv_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".freshtune", ".git"} <= set(ignored)

"""What a newcomer's first `python bench/...` needs: the base checkpoint, or the one command
that fetches it (instead of a raw OSError from deep inside transformers)."""

from __future__ import annotations

import sys
from pathlib import Path

FETCH = "freshtune models fetch smollm2"


def require_checkpoint(model: str | Path, alternatives: str = "or pass --model FOLDER") -> str:
    """`model` when it is a checkpoint folder; else exit naming the command that makes one."""
    if not Path(model, "config.json").is_file():
        sys.exit(f"no checkpoint at {model}: run `{FETCH}` once ({alternatives})")
    return str(model)

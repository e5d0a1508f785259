"""Answers already generated, kept by (model digest, question digest).

The base never changes and a champion was scored when it was the candidate, so a cycle only
pays for what is new: the candidate's answers, and every model's answers to questions it has
not seen. Greedy decoding makes an answer a function of the weights, the prompt, the token
budget and the numeric runtime (CPU float32 or GPU bfloat16), so those are the key. The cache
is a folder of JSON files, one per model: safe to delete at any time.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from freshtune.config import EvalSettings
from freshtune.files import file_digest

_WEIGHTS = ("*.safetensors", "*.bin", "*.gguf", "config.json", "adapter_config.json")


@dataclass(frozen=True)
class Generated:
    """A model's greedy answer to a question and the reference answer's summed NLL."""

    answer: str
    nll: float
    tokens: int


def _folder_digest(folder: Path) -> str:
    files = sorted(p for pattern in _WEIGHTS for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no weights or config to identify the model by")
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _hash_files(stats)


@lru_cache(maxsize=32)
def _hash_files(stats: tuple[tuple[str, int, int], ...]) -> str:
    """Keyed on path, size and mtime so a process hashes a 270 MB base once."""
    parts = [f"{Path(path).name}:{file_digest(Path(path))}" for path, _, _ in stats]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def model_digest(base_model: str, adapter: Path | None, runtime: str) -> str:
    """Identity of what answers: base weights (or hub id), adapter weights, numeric runtime."""
    base = Path(base_model)
    parts = [_folder_digest(base) if base.is_dir() else f"name:{base_model}", runtime]
    if adapter is not None:
        parts.append(_folder_digest(Path(adapter)))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def question_digest(row: dict[str, Any], settings: EvalSettings) -> str:
    """The conversation (prompt and reference answer) and the answer's token budget."""
    blob = json.dumps([row["messages"], settings.max_new_tokens], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class AnswerCache:
    """One JSON file per model digest under `folder`; None: a cache that keeps nothing."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._loaded: dict[str, dict[str, list]] = {}

    def lookup(self, model: str, keys: list[str]) -> dict[str, Generated]:
        entries = self._entries(model)
        return {k: Generated(*entries[k]) for k in keys if k in entries}

    def store(self, model: str, new: dict[str, Generated]) -> None:
        if self.folder is None or not new:
            return
        # Re-read before writing: another process may have added answers meanwhile.
        self._loaded.pop(model, None)
        entries = dict(self._entries(model))
        entries.update({k: [g.answer, g.nll, g.tokens] for k, g in new.items()})
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{model}.json"
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(entries), encoding="utf-8")
        partial.replace(path)
        self._loaded[model] = entries

    def _entries(self, model: str) -> dict[str, list]:
        if model not in self._loaded:
            path = self.folder / f"{model}.json" if self.folder else None
            try:
                self._loaded[model] = json.loads(path.read_text(encoding="utf-8")) if path else {}
            except (FileNotFoundError, json.JSONDecodeError):
                self._loaded[model] = {}  # missing or torn: regenerate, it is only a cache
        return self._loaded[model]

"""Export a registered adapter: stock PEFT files, or merged into a standalone checkpoint."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from freshtune.config import FreshtuneConfig
from tasks import registry

log = logging.getLogger(__name__)


def resolve_version(cfg: FreshtuneConfig, version: str) -> registry.Champion:
    """A version number or an alias (`champion`, `previous`) to its registry entry."""
    mlc = registry.client(cfg)
    name = cfg.tracking.model_name
    if version.isdigit():
        mv = mlc.get_model_version(name, version)
    else:
        mv = mlc.get_model_version_by_alias(name, version)
    return registry.Champion(str(mv.version), mv.run_id, mv.source, dict(mv.tags))


def export_adapter(cfg: FreshtuneConfig, version: str, out: Path, merged: bool = False) -> Path:
    """Write to `out` (which must not exist yet) through a sibling `.partial` folder."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; pick a new --out folder")
    entry = resolve_version(cfg, version)
    adapter = registry.local_adapter(cfg, entry)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    if merged:
        from tasks.models import recorded_base_model

        _merge(recorded_base_model(cfg, entry.version, entry.tags), adapter, staging)
    else:
        staging.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(adapter / name, staging / name)
    if out.exists():
        out.rmdir()
    staging.rename(out)
    log.info(
        "exported version %s (%s) to %s", entry.version, "merged" if merged else "adapter", out
    )
    return out


def _merge(base_model: str, adapter: Path, out: Path) -> None:
    from tasks.models import load_causal_lm, load_tokenizer
    from tasks.train import merged_with

    merged = merged_with(load_causal_lm(base_model), adapter)
    merged.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(base_model).save_pretrained(str(out))

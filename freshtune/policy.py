"""The safety policy: settings a run's parameters may tighten but never weaken.

Every config field is a deployment parameter a person can edit per run in the Prefect UI. The
settings that decide safety (human review, the gate's thresholds, which base models, drop
locations and eval files, the workspace) are also held where run parameters cannot reach: in
the worker's environment (`FRESHTUNE_POLICY`: a YAML/JSON file, or inline JSON, set by the
operator in the job template or a Kubernetes Secret) or in the Prefect Variable
`freshtune_policy` that `freshtune deploy` writes from the deployment's own config. A run that
asks for weaker values is refused before any work, naming each one. Without either source
(the embedded default) there is no policy and nothing changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from freshtune.config import FreshtuneConfig

ENV = "FRESHTUNE_POLICY"
VARIABLE = "freshtune_policy"
# Gate rules: (name, True when a higher value is stricter).
GATE_RULES = (
    ("min_gain", True),
    ("max_forgetting", False),
    ("max_general_drop", False),
    ("max_hallucination_rate", False),
    ("min_bias_consistency", True),
)


class PolicyRefused(PermissionError):
    """A run asked for weaker safety settings than the policy allows; nothing was done."""


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    human_review: bool = False
    min_gain: float | None = None
    max_forgetting: float | None = None
    max_general_drop: float | None = None
    max_hallucination_rate: float | None = None
    min_bias_consistency: float | None = None
    undecided_needs_review: bool = False
    base_models: list[str] | None = None
    eval_files: list[str] | None = None  # "" stands for the file freshtune ships
    drop_locations: list[str] | None = None  # folders or URL prefixes a drop may come from
    workspace: str | None = None
    forced_rollback: bool = True

    @classmethod
    def of(cls, cfg: FreshtuneConfig) -> Policy:
        """The policy a deployment's own config implies: nothing weaker than it."""
        return cls(
            human_review=cfg.review.mode != "auto",
            **{name: getattr(cfg.gate, name) for name, _ in GATE_RULES},
            undecided_needs_review=cfg.gate.undecided == "review",
            base_models=[cfg.base_model],
            eval_files=sorted({_file(cfg.eval.general_file), _file(cfg.eval.bias_file)}),
            drop_locations=[cfg.deploy.landing_url or str(cfg.paths.landing)],
            workspace=str(cfg.paths.root),
            forced_rollback=cfg.review.forced_rollback,
        )

    def refusals(
        self, cfg: FreshtuneConfig, drop: str | None = None, force: bool = False
    ) -> list[str]:
        """What in this run is weaker than the policy, one line each (empty: allowed);
        `force` is a rollback's `--force`."""
        forced = force and not self.forced_rollback
        return [
            *self._decisions(cfg),
            *self._inputs(cfg, drop),
            *(["rollback --force, which the policy does not allow"] if forced else []),
        ]

    def _decisions(self, cfg: FreshtuneConfig) -> list[str]:
        out = []
        if self.human_review and cfg.review.mode == "auto":
            out.append("review.mode=auto, but a human must review (pause or terminal)")
        for name, higher_is_stricter in GATE_RULES:
            floor, value = getattr(self, name), getattr(cfg.gate, name)
            if floor is not None and (value < floor if higher_is_stricter else value > floor):
                out.append(f"gate.{name}={value} is weaker than the policy's {floor}")
        if self.undecided_needs_review and cfg.gate.undecided != "review":
            out.append("gate.undecided=accept, but an undecided candidate needs a review")
        return out

    def _inputs(self, cfg: FreshtuneConfig, drop: str | None) -> list[str]:
        out = []
        if self.base_models is not None and cfg.base_model not in self.base_models:
            out.append(f"base_model={cfg.base_model} is not one of {self.base_models}")
        out += self._eval_files(cfg)
        places = self.drop_locations
        if drop is not None and places is not None and not any(_within(drop, p) for p in places):
            out.append(f"drop {drop} is not under {places}")
        # A worker with FRESHTUNE_HOME uses its own workspace whatever the run asks for.
        fixed = os.environ.get("FRESHTUNE_HOME")
        if self.workspace is not None and not fixed and str(cfg.paths.root) != self.workspace:
            out.append(f"workspace {cfg.paths.root} is not the policy's {self.workspace}")
        return out

    def _eval_files(self, cfg: FreshtuneConfig) -> list[str]:
        if self.eval_files is None:
            return []
        wanted = {"eval.general_file": cfg.eval.general_file, "eval.bias_file": cfg.eval.bias_file}
        return [
            f"{name}={value} is not one of the allowed eval files"
            for name, value in wanted.items()
            if _file(value) not in self.eval_files
        ]


def parse(text: str) -> Policy:
    import yaml

    return Policy.model_validate(yaml.safe_load(text) or {})


def from_environment() -> Policy | None:
    """The worker's own policy (`FRESHTUNE_POLICY`: a file path, or inline JSON), or None."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    return parse(raw if raw.startswith("{") else Path(raw).read_text(encoding="utf-8"))


def _file(path: Path | None) -> str:
    return "" if path is None else str(Path(path).expanduser().resolve())


def _within(drop: str, place: str) -> bool:
    if "://" in place or "://" in drop:
        return drop.startswith(place.rstrip("/") + "/")
    local = Path(drop.removeprefix("file://")).expanduser().resolve()
    return local.is_relative_to(Path(place).expanduser().resolve())


def describe(policy: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in policy.model_dump().items() if v not in (None, False))

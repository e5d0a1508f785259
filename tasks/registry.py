"""MLflow tracking and the model registry: cycle runs, adapter versions and the champion alias.

Adapters are logged as plain PEFT files among the run's artifacts (not through
`mlflow.transformers`, which has saved wrong base weights for a PeftModel on a local base).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import FreshtuneConfig
from tasks.snapshot import Snapshot
from tasks.tracking import (
    TrackingUnavailable,
    client,
    experiment_id,
    redacted,
    tracking_uri,
)

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS = "champion", "previous"


class ChampionMoved(RuntimeError):
    """The champion changed while this candidate was being evaluated against the old one."""


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    adapter_dir: Path | None = None

    @property
    def adapter_key(self) -> str:
        return self.tags["adapter_key"]


def open_run(cfg: FreshtuneConfig, digest: str, tags: dict[str, str]) -> str:
    run = client(cfg).create_run(
        experiment_id(cfg),
        run_name=f"cycle-{digest[:8]}",
        tags={"freshtune.drop_digest": digest, **tags},
    )
    return run.info.run_id


def named_run(cfg: FreshtuneConfig, name: str) -> str:
    """The one run of the experiment tagged `freshtune.kind=<name>`, made on first use: a place
    for metrics that span cycles (MLflow charts a run's metrics over their steps)."""
    mlc = client(cfg)
    found = mlc.search_runs(
        [experiment_id(cfg)], f"tags.`freshtune.kind` = '{name}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = mlc.create_run(experiment_id(cfg), run_name=name, tags={"freshtune.kind": name})
    return run.info.run_id


def log_params(cfg: FreshtuneConfig, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), 100):
        client(cfg).log_batch(run_id, params=items[start : start + 100])


def log_metrics(cfg: FreshtuneConfig, run_id: str, metrics: dict[str, float], step: int = 0):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step) for k, v in sorted(metrics.items()) if v == v
    ]  # NaN is "not measured": MLflow would store it but plots break
    if items:
        client(cfg).log_batch(run_id, metrics=items)


def log_artifacts(cfg: FreshtuneConfig, run_id: str, folder: Path, name: str) -> None:
    client(cfg).log_artifacts(run_id, str(folder), name)


def log_text(cfg: FreshtuneConfig, run_id: str, text: str, path: str) -> None:
    client(cfg).log_text(run_id, text, path)


def log_table(cfg: FreshtuneConfig, run_id: str, data: dict[str, list], path: str) -> None:
    client(cfg).log_table(run_id, data=data, artifact_file=path)


def set_tags(cfg: FreshtuneConfig, run_id: str, tags: dict[str, Any]) -> None:
    mlc = client(cfg)
    for key, value in tags.items():
        mlc.set_tag(run_id, key, str(value))


def close_run(cfg: FreshtuneConfig, run_id: str, status: str = "FINISHED") -> None:
    client(cfg).set_terminated(run_id, status=status)


def get_champion(cfg: FreshtuneConfig) -> Champion | None:
    """The version under alias `champion`; None only when MLflow says it does not exist (no
    registered model yet, or no alias). An outage is an error naming the server: read as "no
    champion", it would train from the base and compare against the base."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(cfg).get_model_version_by_alias(cfg.tracking.model_name, CHAMPION)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise TrackingUnavailable(
            f"MLflow tracking server {redacted(tracking_uri(cfg))} did not answer for the "
            f"champion of {cfg.tracking.model_name}: {redacted(str(exc).splitlines()[0])[:300]} "
            "(check that it runs and MLFLOW_TRACKING_URI and its credentials)"
        ) from None
    return Champion(str(mv.version), mv.run_id, mv.source, dict(mv.tags))


def _not_found(exc: Any) -> bool:
    message = str(exc).lower()
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        exc.error_code == "INVALID_PARAMETER_VALUE"
        and "alias" in message
        and "not found" in message
    )


def ensure_registered_model(cfg: FreshtuneConfig) -> None:
    """The registered model of the adapters, made on first use (only not-found creates it)."""
    from mlflow.exceptions import MlflowException

    mlc = client(cfg)
    try:
        mlc.get_registered_model(cfg.tracking.model_name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        mlc.create_registered_model(
            cfg.tracking.model_name,
            description="LoRA adapters kept fresh by freshtune; alias `champion` serves.",
        )


def register_adapter(cfg: FreshtuneConfig, run_id: str, tags: dict[str, Any]) -> str:
    """A new model version whose source is the run's `adapter/` artifacts."""
    mlc = client(cfg)
    ensure_registered_model(cfg)
    if (known := _registered(cfg, tags)) is not None:
        log.info("adapter %s of this drop is version %s already", tags["adapter_key"], known)
        return known
    source = f"{mlc.get_run(run_id).info.artifact_uri}/adapter"
    version = mlc.create_model_version(
        cfg.tracking.model_name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}
    )
    return str(version.version)


def _registered(cfg: FreshtuneConfig, tags: dict[str, Any]) -> str | None:
    """The version already registered for this drop and adapter: a retried or rerun
    registration returns it instead of adding a second version of the same weights."""
    if "drop_digest" not in tags:
        return None
    found = client(cfg).search_model_versions(
        f"name = '{cfg.tracking.model_name}' and tags.adapter_key = '{tags['adapter_key']}' "
        f"and tags.drop_digest = '{tags['drop_digest']}'"
    )
    return str(min(int(mv.version) for mv in found)) if found else None


def promote(cfg: FreshtuneConfig, version: str, expected: Champion | None) -> None:
    """Move `champion` to `version` and `previous` to the old one, if nobody moved it since."""
    current = get_champion(cfg)
    if current is not None and current.version == version:
        log.info("version %s is champion already (an earlier attempt moved it)", version)
        if "promoted_at" not in (current.tags or {}):  # that attempt stopped before the tag
            _mark_served(cfg, version)
        return
    if (current and current.version) != (expected and expected.version):
        raise ChampionMoved(
            f"champion is now version {current and current.version}, not "
            f"{expected and expected.version} that candidate {version} was compared with"
        )
    mlc = client(cfg)
    if current is not None:
        mlc.set_registered_model_alias(cfg.tracking.model_name, PREVIOUS, current.version)
    mlc.set_registered_model_alias(cfg.tracking.model_name, CHAMPION, version)
    faults.reach("alias")
    _mark_served(cfg, version)
    log.info("promoted version %s to %s", version, CHAMPION)


def _mark_served(cfg: FreshtuneConfig, version: str) -> None:
    """`promoted_at`: the version served, so a rollback may return to it without --force."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client(cfg).set_model_version_tag(cfg.tracking.model_name, version, "promoted_at", stamp)


def rollback(
    cfg: FreshtuneConfig, to_version: str | None, who: str, why: str, force: bool = False
) -> dict[str, str]:
    """Move `champion` back (to `previous` by default); `previous` then holds the version rolled
    back from, so a second rollback undoes the first. The audit record is written before any
    alias moves and marked done after, so a rollback cut short is visible as such."""
    current = get_champion(cfg)
    if current is None:
        raise ValueError("there is no champion to roll back")
    mlc = client(cfg)
    name = cfg.tracking.model_name
    to_version = to_version or _previous(cfg)
    servable = mlc.get_model_version(name, to_version)  # an unknown version: a clear error
    _check_servable(servable, force, cfg.review.forced_rollback)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {"from": current.version, "to": to_version, "who": who, "why": why, "at": stamp}
    audit = f"rollback.{stamp.replace(':', '')}.{current.version}-{to_version}"
    mlc.set_registered_model_tag(name, audit, json.dumps({**record, "state": "started"}))
    mlc.set_registered_model_alias(name, CHAMPION, to_version)
    mlc.set_registered_model_alias(name, PREVIOUS, current.version)
    for version, key in ((to_version, "rolled_back_to_at"), (current.version, "rolled_back_at")):
        mlc.set_model_version_tag(name, version, key, json.dumps(record))
    mlc.set_registered_model_tag(name, audit, json.dumps({**record, "state": "done"}))
    mlc.set_registered_model_tag(name, "last_rollback", json.dumps(record))
    log.warning(
        "rolled back champion from %s to %s (%s: %s)", current.version, to_version, who, why
    )
    return record


def _previous(cfg: FreshtuneConfig) -> str:
    """The version under `previous`; an outage is the outage, not "no previous alias"."""
    from mlflow.exceptions import MlflowException

    try:
        return str(
            client(cfg).get_model_version_by_alias(cfg.tracking.model_name, PREVIOUS).version
        )
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    raise ValueError("no `previous` alias to roll back to; pass --to VERSION")


def _check_servable(mv: Any, force: bool, allowed: bool = True) -> None:
    """Only a version that served before or passed the gate may serve again, unless forced
    (where `review.forced_rollback` allows forcing)."""
    tags = mv.tags or {}
    if "promoted_at" in tags or tags.get("gate") == "BLESSED" or (force and allowed):
        return
    verdict = tags.get("gate") or "unknown"
    remedy = "pass --force to serve it anyway" if allowed else "review.forced_rollback is off"
    raise ValueError(
        f"version {mv.version} was never champion and its gate verdict is {verdict}; {remedy}"
    )


def local_adapter(cfg: FreshtuneConfig, champion: Champion) -> Path:
    """The champion's adapter folder in this workspace: from the artifact store (verified by
    digest), or, for a version registered before it, from the version's run artifacts."""
    from mlflow.artifacts import download_artifacts

    from tasks import store

    target = cfg.paths.adapters / champion.adapter_key
    if (target / "adapter_model.safetensors").exists():
        return target
    if (stored := store.find(cfg, store.ADAPTERS, champion.adapter_key, target)) is not None:
        return stored
    staging = target.with_name(target.name + ".download")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fetched = Path(
        download_artifacts(
            artifact_uri=champion.source, dst_path=str(staging), tracking_uri=tracking_uri(cfg)
        )
    )
    fetched.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


@task(name="find-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def find_champion(cfg: FreshtuneConfig, digest: str | None = None) -> Champion | None:
    """The serving adapter (alias `champion`), fetched into the workspace if needed.

    With the drop's `digest`: the champion this drop's candidate is measured against. When an
    earlier attempt at this drop promoted its candidate and died before recording the cycle,
    that is the version its candidate replaced, so the rerun trains, scores and decides
    exactly as the first attempt did and the alias does not move again."""
    champion = get_champion(cfg)
    if champion is not None and digest is not None and champion.tags.get("drop_digest") == digest:
        log.warning("version %s of this drop serves already; finishing its cycle", champion.version)
        champion = _version(cfg, champion.tags.get("parent_version") or None)
    if champion is None:
        log.info("no champion yet: the candidate trains from the base model")
        return None
    return replace(champion, adapter_dir=local_adapter(cfg, champion))


def _version(cfg: FreshtuneConfig, version: str | None) -> Champion | None:
    if version is None:
        return None
    mv = client(cfg).get_model_version(cfg.tracking.model_name, version)
    return Champion(str(mv.version), mv.run_id, mv.source, dict(mv.tags))


@task(name="open-cycle-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def open_cycle_run(snapshot: Snapshot, champion: Champion | None, cfg: FreshtuneConfig) -> str:
    """The MLflow run of this cycle: config, data digest and the curation counts. A flow run
    that starts again from the top (resumed after a suspended review) goes on in its own."""
    from prefect.runtime import flow_run

    this = str(flow_run.id or "")
    if (resumed := abandon_runs(cfg, snapshot.digest, keep=this)) is not None:
        log.info("cycle run %s belongs to this flow run: going on in it", resumed)
        return resumed
    run_id = open_run(
        cfg,
        snapshot.digest,
        {
            "freshtune.flow_run_id": this,
            "freshtune.parent_version": champion.version if champion else "",
        },
    )
    log_params(cfg, run_id, flatten(cfg.model_dump(mode="json")))
    log_text(cfg, run_id, cfg.model_dump_json(indent=2), "config.json")
    log_metrics(cfg, run_id, snapshot.meta().get("curation", {}))
    return run_id


def abandon_runs(cfg: FreshtuneConfig, digest: str, keep: str = "") -> str | None:
    """Mark FAILED the cycle runs of this drop still RUNNING: their process died without its
    failure hook (killed, node lost). The drop's claim means no other cycle of it is alive.
    The run of flow run `keep` is kept (its flow run was suspended, not lost): its id."""
    mlc = client(cfg)
    runs = mlc.search_runs(
        [experiment_id(cfg)],
        filter_string=(
            f"tags.`freshtune.drop_digest` = '{digest}' and attributes.status = 'RUNNING'"
        ),
    )
    kept = None
    for run in runs:
        if keep and kept is None and run.data.tags.get("freshtune.flow_run_id") == keep:
            kept = run.info.run_id
            continue
        log.warning(
            "cycle run %s of this drop was left running; marking it FAILED", run.info.run_id
        )
        mlc.set_tag(run.info.run_id, "freshtune.abandoned", "true")
        mlc.set_terminated(run.info.run_id, status="FAILED")
    return kept


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def lineage_tags(
    digest: str, champion: Champion | None, cfg: FreshtuneConfig, replay_share: float, verdict: str
) -> dict[str, Any]:
    """What a model version records about where it came from."""
    return {
        "drop_digest": digest,
        "parent_version": champion.version if champion else "",
        "base_model": cfg.base_model,
        "replay_share": f"{replay_share:.4f}",
        "gate": verdict,
    }


@task(name="register-candidate", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
@faults.after("register")
def register_candidate(
    adapter_dir: Path, lineage: dict[str, Any], cfg: FreshtuneConfig, run_id: str
) -> str:
    """Log the adapter as plain PEFT files and register it as a new model version."""
    log_artifacts(cfg, run_id, adapter_dir, "adapter")
    version = register_adapter(cfg, run_id, {"adapter_key": adapter_dir.name, **lineage})
    set_tags(cfg, run_id, {"freshtune.model_version": version})
    return version


def fail_cycle_run(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: a cycle that failed or crashed leaves its MLflow run FAILED, not RUNNING."""
    config = flow_run.parameters.get("config")
    if config is None:
        return
    cfg = config if isinstance(config, FreshtuneConfig) else FreshtuneConfig.model_validate(config)
    try:
        mlc = client(cfg)
        runs = mlc.search_runs(
            [experiment_id(cfg)],
            filter_string=f"tags.`freshtune.flow_run_id` = '{flow_run.id}'",
        )
        for run in runs:
            if run.info.status == "RUNNING":
                mlc.set_terminated(run.info.run_id, status="FAILED")
    except Exception as exc:  # the hook must not mask the flow's own error
        log.warning("could not mark the MLflow run of flow run %s failed: %s", flow_run.id, exc)

"""Apply freshtune's deployments, schedules, triggers and work pools to a Prefect server.

`freshtune deploy` calls `apply_all` against the server that `PREFECT_API_URL` names:

| deployment | flow | runs when |
|---|---|---|
| `refresh/on-data-drop` | refresh | event `freshtune.drop.landed` (payload: path, digest) |
| `monthly-refresh/monthly-refresh` | monthly-refresh | `deploy.monthly_cron`; `...model.decayed` |
| `decay-monitor/decay-monitor` | decay-monitor | `deploy.decay_cron` (weekly) |
| `rollback/rollback` | rollback | by hand (UI or `prefect deployment run`) |
| `train-on-gpu/<gpu_pool>` | train-on-gpu | called by refresh when `train.work_pool` is set |

Deployments point at installed modules (`flows.refresh.refresh`), so a worker needs freshtune
installed (the worker image does) and the same workspace storage; every run gets the config
as its `config` parameter, editable in the UI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from deployments.alerts import ensure_alerts, read_automation
from freshtune.config import FreshtuneConfig
from freshtune.policy import describe
from tasks.events import DROP_LANDED, MODEL_DECAYED
from tasks.policy import publish_policy

POOLS_DIR = Path(__file__).resolve().parent / "pools"
PoolKind = Literal["process", "docker", "kubernetes"]


def base_job_template(kind: PoolKind, gpu: bool) -> dict[str, Any]:
    """The pool's job template from `deployments/pools/` (GPU requests on Kubernetes)."""
    path = POOLS_DIR / f"{kind}-gpu.json"
    if not (gpu and path.exists()):
        path = POOLS_DIR / f"{kind}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def ensure_pools(cfg: FreshtuneConfig, kind: PoolKind) -> list[str]:
    """Create the cpu and gpu work pools if missing; existing pools are left as they are."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    created = []
    with get_client(sync_client=True) as client:
        for name, gpu in ((cfg.deploy.cpu_pool, False), (cfg.deploy.gpu_pool, True)):
            pool = WorkPoolCreate(
                name=name,
                type=kind,
                base_job_template=base_job_template(kind, gpu),
                description=f"freshtune {'GPU training' if gpu else 'orchestration'} ({kind})",
            )
            try:
                client.create_work_pool(pool)
                created.append(name)
            except ObjectAlreadyExists:
                pass
    return created


def deployments(cfg: FreshtuneConfig) -> list[tuple[Any, str]]:
    """(RunnerDeployment, work pool) pairs; the config travels as the `config` parameter."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.decay import decay_monitor
    from flows.monthly import monthly_refresh
    from flows.refresh import refresh
    from flows.rollback import rollback
    from flows.train import train_on_gpu

    config = {"config": cfg.model_dump(mode="json")}
    tz = cfg.deploy.timezone
    on_drop = DeploymentEventTrigger(
        name="freshtune drop landed",
        expect={DROP_LANDED},
        match={"prefect.resource.id": "freshtune.drop.*"},
        parameters={"drop": "{{ event.payload.path }}"},
    )
    on_decay = DeploymentEventTrigger(name="freshtune model decayed", expect={MODEL_DECAYED})
    cpu, gpu = cfg.deploy.cpu_pool, cfg.deploy.gpu_pool
    return [
        (_to(refresh, "on-data-drop", config, triggers=[on_drop]), cpu),
        (
            _to(
                monthly_refresh,
                "monthly-refresh",
                config,
                triggers=[on_decay],
                schedules=[Cron(cfg.deploy.monthly_cron, timezone=tz)],
            ),
            cpu,
        ),
        (
            _to(
                decay_monitor,
                "decay-monitor",
                config,
                schedules=[Cron(cfg.deploy.decay_cron, timezone=tz)],
            ),
            cpu,
        ),
        (_to(rollback, "rollback", config), cpu),
        (_to(train_on_gpu, gpu, config), gpu),
    ]


def _to(flow: Any, name: str, parameters: dict[str, Any], **kwargs: Any) -> Any:
    from prefect.deployments.runner import EntrypointType

    return flow.to_deployment(
        name=name,
        parameters=parameters,
        entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["freshtune"],
        **kwargs,
    )


UNRESPONSIVE = "freshtune: crash unresponsive runs"


def unresponsive_runs(cfg: FreshtuneConfig) -> Any:
    """The automation that marks a freshtune flow run Crashed once its heartbeats stop (a
    lost node or an evicted pod leaves it Running forever otherwise); a crashed training run
    is then started again by the refresh that waits for it (tasks/train.py `dispatch`)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    # Suspended: a run waiting for review (tasks/waiting.py) has no process to beat; not lost.
    states = ("Completed", "Failed", "Cancelled", "Crashed", "Suspended")
    stopped = {f"prefect.flow-run.{s}" for s in states}
    silent = cfg.deploy.unresponsive_after_s
    return Automation(
        name=UNRESPONSIVE,
        description=f"no heartbeat for {silent} s: the run's worker is lost",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *stopped},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.freshtune"}
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=cfg.deploy.unresponsive_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {silent} s: worker lost",
            )
        ],
    )


def ensure_automations(cfg: FreshtuneConfig) -> list[str]:
    """Create or update freshtune's own automations (by name), the alerts' included; returns
    their names."""
    wanted = unresponsive_runs(cfg)
    found = read_automation(wanted.name)
    if found is None:
        wanted.create()
    else:
        wanted.id = found.id
        wanted.update()
    return [wanted.name, *ensure_alerts(cfg)]


def apply_all(cfg: FreshtuneConfig, kind: PoolKind = "process") -> dict[str, Any]:
    """Pools, then deployments with their schedules and automations; safe to run again."""
    created = ensure_pools(cfg, kind)
    applied = {}
    for deployment, pool in deployments(cfg):
        deployment_id = deployment.apply(work_pool_name=pool)
        applied[f"{deployment.flow_name}/{deployment.name}"] = str(deployment_id)
    automations = ensure_automations(cfg)
    policy = publish_policy(cfg)
    return {
        "pools_created": created,
        "deployments": applied,
        "automations": automations,
        "policy": describe(policy),
        "worker_user": ensure_worker_access(cfg),
    }


WORKER_USER = "FRESHTUNE_WORKER_MLFLOW_USERNAME"
WORKER_PASSWORD = "FRESHTUNE_WORKER_MLFLOW_PASSWORD"


def ensure_worker_access(cfg: FreshtuneConfig) -> str | None:
    """The workers' own MLflow user, made by `deploy` with the admin's credentials: MANAGE on
    freshtune's experiment (MLflow's artifact proxy deletes only for MANAGE, and the store
    rotates checkpoints), EDIT on its registered model, nothing else (no other experiment, no
    user management), so a worker's leaked credentials are not the admin's. Safe to rerun."""
    import os

    from mlflow.exceptions import RestException
    from mlflow.server import get_app_client

    from tasks import registry

    user, password = os.environ.get(WORKER_USER), os.environ.get(WORKER_PASSWORD, "")
    if not user:
        return None
    auth = get_app_client("basic-auth", tracking_uri=registry.tracking_uri(cfg))
    try:
        auth.create_user(user, password)
    except RestException:  # made by an earlier deploy: its password is the configured one now
        auth.update_user_password(user, password)
    registry.ensure_registered_model(cfg)
    grants = [
        ("experiment", registry.experiment_id(cfg), "MANAGE"),
        ("registered_model", cfg.tracking.model_name, "EDIT"),
    ]
    for kind, resource, permission in grants:
        try:
            auth.grant_user_permission(user, kind, resource, permission)
        except RestException:  # granted before, perhaps differently: this is what it is now
            auth.revoke_user_permission(user, kind, resource)
            auth.grant_user_permission(user, kind, resource, permission)
    return user

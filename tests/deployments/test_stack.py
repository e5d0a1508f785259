"""Deployments on a real Prefect server (PostgreSQL), events from `freshtune drop`, a process
worker running the cycles, MLflow on a real server, Redis claims against double triggers."""

from __future__ import annotations

import shutil

from tasks.landing import emit_landed, land
from tests.deployments.conftest import Stack

MODEL = "freshtune-adapter"


def test_deploy_creates_pools_deployments_schedules_and_triggers(stack: Stack):
    from prefect import get_client

    with stack.settings(), get_client(sync_client=True) as client:
        pools = {p.name: p for p in client.read_work_pools()}
        deployments = {f"{d.name}": d for d in client.read_deployments()}
        automations = {a.name: a for a in client.read_automations()}
    assert {"cpu", "gpu"} <= set(pools) and pools["cpu"].type == "process"
    assert set(deployments) == {
        "on-data-drop",
        "monthly-refresh",
        "decay-monitor",
        "rollback",
        "gpu",
    }
    assert deployments["gpu"].work_pool_name == "gpu"
    assert deployments["on-data-drop"].work_pool_name == "cpu"
    monthly = deployments["monthly-refresh"].schedules[0].schedule
    assert (monthly.cron, monthly.timezone) == ("0 3 1 * *", "Europe/Berlin")
    weekly = deployments["decay-monitor"].schedules[0].schedule
    assert weekly.cron == "0 4 * * 1"
    assert deployments["rollback"].schedules == []
    on_drop = automations["freshtune drop landed"]
    assert on_drop.trigger.expect == {"freshtune.drop.landed"}
    assert on_drop.actions[0].parameters == {"drop": "{{ event.payload.path }}"}
    assert automations["freshtune model decayed"].trigger.expect == {"freshtune.model.decayed"}
    # A run whose heartbeats stop (its node lost) is marked Crashed, then started again.
    lost = automations["freshtune: crash unresponsive runs"]
    assert lost.trigger.posture == "Proactive" and lost.trigger.after == {
        "prefect.flow-run.heartbeat"
    }
    assert lost.trigger.within.total_seconds() == stack.cfg.deploy.unresponsive_after_s
    assert lost.actions[0].state.value == "CRASHED"
    # The config travels as a parameter, so the UI shows (and lets ops edit) it.
    params = deployments["on-data-drop"].parameters["config"]
    assert params["base_model"] == stack.cfg.base_model
    # ... but not weaken its safety settings: deploy wrote them where run parameters cannot.
    from prefect.variables import Variable

    from freshtune.policy import VARIABLE, Policy

    with stack.settings():
        assert Policy.model_validate(Variable.get(VARIABLE)) == Policy.of(stack.cfg)


def test_deploying_twice_changes_nothing(stack: Stack):
    from prefect import get_client

    before = stack.cli("deploy").stdout
    with stack.settings(), get_client(sync_client=True) as client:
        names = sorted(a.name for a in client.read_automations())
    assert "created work pool" not in before
    assert names == [
        "freshtune drop landed",
        "freshtune model decayed",
        "freshtune: crash unresponsive runs",
    ]


def test_kubernetes_and_docker_pool_templates_are_accepted_by_the_server(stack: Stack):
    from prefect import get_client

    from deployments.deploy import ensure_pools

    for kind in ("kubernetes", "docker"):
        cfg = stack.cfg.model_copy(
            update={
                "deploy": stack.cfg.deploy.model_copy(
                    update={"cpu_pool": f"{kind}-cpu", "gpu_pool": f"{kind}-gpu"}
                )
            }
        )
        with stack.settings():
            assert ensure_pools(cfg, kind) == [f"{kind}-cpu", f"{kind}-gpu"]
    with stack.settings(), get_client(sync_client=True) as client:
        gpu = client.read_work_pool("kubernetes-gpu").base_job_template
        cpu = client.read_work_pool("kubernetes-cpu").base_job_template
    container = gpu["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert container["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert "gpu_count" not in cpu["variables"]["properties"]


def test_a_landed_drop_event_runs_a_cycle_that_promotes(stack: Stack, demo_drops):
    out = stack.cli("drop", str(demo_drops[0])).stdout
    assert "emitted freshtune.drop.landed" in out
    landed = list(stack.cfg.paths.landing.glob("*-month-01.jsonl"))
    assert len(landed) == 1  # copied, named by digest
    runs = stack.wait_runs("refresh/on-data-drop", 1)
    assert runs[0].parameters["drop"] == str(landed[0])
    champion = stack.mlflow().get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "1"
    assert champion.tags["drop_digest"].startswith(landed[0].name[:12])


def test_the_same_digest_twice_makes_one_cycle(stack: Stack, demo_drops):
    with stack.settings():
        landed = land(demo_drops[1], stack.cfg)
        emit_landed(landed, demo_drops[1].name)  # a double trigger, milliseconds apart
        emit_landed(landed, demo_drops[1].name)
    stack.wait_runs("refresh/on-data-drop", 3)
    client = stack.mlflow()
    experiment = client.get_experiment_by_name(stack.cfg.tracking.experiment)
    cycles = client.search_runs(
        [experiment.experiment_id], f"tags.`freshtune.drop_digest` = '{landed.digest}'"
    )
    assert len(cycles) == 1
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert len(list(stack.cfg.paths.cycles.glob(f"{landed.digest[:16]}.json"))) == 1


def test_a_decayed_champion_triggers_the_monthly_refresh(stack: Stack, demo_drops, tmp_path):
    from prefect.deployments import run_deployment

    # Month 3 lands without an event (copied by some other system); the monitor finds the
    # champion wrong on its facts and raises the alarm, which starts monthly-refresh.
    quiet = shutil.copy(demo_drops[2], tmp_path / "month-03.jsonl")
    before = stack.mlflow().get_model_version_by_alias(MODEL, "champion")
    with stack.settings():
        landed = land(quiet, stack.cfg)
        cfg = stack.cfg.model_copy(
            update={"deploy": stack.cfg.deploy.model_copy(update={"decay_min_accuracy": 0.99})}
        )
        run_deployment(
            "decay-monitor/decay-monitor",
            parameters={"config": cfg.model_dump(mode="json")},
            timeout=0,
        )
    stack.wait_runs("decay-monitor/decay-monitor", 1)
    stack.wait_runs("monthly-refresh/monthly-refresh", 1)
    assert (stack.cfg.paths.cycles / f"{landed.digest[:16]}.json").exists()
    champion = stack.mlflow().get_model_version_by_alias(MODEL, "champion")
    assert int(champion.version) == int(before.version) + 1
    assert champion.tags["drop_digest"] == landed.digest


def test_watch_announces_each_new_digest_once(stack: Stack, tmp_path):
    from freshtune.demo_domain import write_drop

    # Another system copies a drop into the landing folder; `watch` announces it, once.
    drop = write_drop(5, tmp_path / "month-05.jsonl")
    before = len(stack.runs_of("refresh/on-data-drop"))
    target = stack.cfg.paths.landing / "from-sftp-month-05.jsonl"
    shutil.copy(drop, target)
    first = stack.cli("watch", "--once").stdout
    assert "from-sftp-month-05.jsonl" in first
    assert "from-sftp-month-05.jsonl" not in stack.cli("watch", "--once").stdout
    runs = stack.wait_runs("refresh/on-data-drop", before + first.count("emitted"))
    assert str(target) in [r.parameters["drop"] for r in runs]

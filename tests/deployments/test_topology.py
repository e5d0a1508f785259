"""The production topology on one machine: a Prefect server with an auth string, an MLflow
server on PostgreSQL with served artifacts and basic-auth, Redis with a password, and workers
that share nothing but those servers: each has its own empty FRESHTUNE_HOME and, where the
machine allows it, its own network namespace, from which only the servers are reachable.

A drop is validated and curated on a cpu worker and trained on a gpu worker; the gpu worker
is killed mid-training and a new one with an empty workspace finishes the run from the last
uploaded checkpoint; a month-2 drop on a cpu worker that never saw month 1 replays month-1
rows exactly as one machine does.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from freshtune.config import FreshtuneConfig, load_config
from tests.helpers import servers
from tests.helpers.netns import Network, network

CLI = str(servers.BIN / "freshtune")
MODEL = "freshtune-adapter"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PREFECT_AUTH = "operator:prefect-topology-pw"
MLFLOW_ADMIN = ("admin", "mlflow-topology-pw-0123")
REDIS_PASSWORD = "redis-topology-pw"
WORKER = ("freshtune-worker", "worker-topology-pw")
FTP_LOGIN = ("landing", "ftp-topology-pw")  # the object store the drops land in


@dataclass
class Cluster:
    net: Network
    env: dict[str, str]
    overrides: list[str]
    cfg: FreshtuneConfig  # as the operator's machine sees it
    root: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        options = ["--config", "tiny", "--workspace", str(self.cfg.workspace)]
        for override in self.overrides:
            options += ["--set", override]
        done = subprocess.run(
            [CLI, *args, *options], env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"freshtune {args} exited {done.returncode}:\n{done.stderr}"
        return done

    @contextmanager
    def worker(self, name: str, pool: str, host: int) -> Iterator[subprocess.Popen]:
        """A process worker on host `host` with its own, empty FRESHTUNE_HOME."""
        home = self.root / "workers" / name
        home.mkdir(parents=True)
        env = {**self.env, "FRESHTUNE_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        # Workers hold their own MLflow user (made by deploy), not the admin's.
        env.update(MLFLOW_TRACKING_USERNAME=WORKER[0], MLFLOW_TRACKING_PASSWORD=WORKER[1])
        args = [*self.net.prefix(host), str(servers.BIN / "prefect"), "worker", "start"]
        args += ["--pool", pool, "--type", "process", "--name", name]
        with servers.process(args, env, self.root / f"{name}.log") as proc:
            yield proc

    def runs_of(self, deployment: str) -> list[Any]:
        with self.settings():
            return servers.deployment_runs(deployment)

    def wait_runs(self, deployment: str, count: int, timeout: float = 600) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs_of(deployment)
            if len(runs) >= count and all(r.state_type.value in TERMINAL for r in runs):
                return runs
            time.sleep(2)
        raise TimeoutError(f"{deployment}: {[(r.name, r.state_name) for r in runs]}")

    def settings(self) -> Any:
        return servers.prefect_at(self.env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING=PREFECT_AUTH)

    def mlflow(self) -> Any:
        from mlflow import MlflowClient

        uri = self.env["MLFLOW_TRACKING_URI"]
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a worker and every process under it, as a lost node would take them."""
    import psutil

    parent = psutil.Process(proc.pid)
    for child in [*parent.children(recursive=True), parent]:
        with suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def cluster(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, one_machine: OneMachine
) -> Iterator[Cluster]:
    """The servers, `freshtune deploy` applied; the tests start and stop the workers. (The
    one-machine reference starts first: it runs while the cluster boots.)"""
    root = tmp_path_factory.mktemp("cluster")
    overrides = [
        f"base_model={tiny_model}",
        "train.work_pool=gpu",
        "train.save_steps=10",
        "train.epochs=3",
        "deploy.unresponsive_after_s=45",
    ]
    with (
        network(4) as net,
        servers.postgres_database("freshtune_prefect") as prefect_db,
        servers.postgres_database("freshtune_mlflow") as mlflow_db,
        servers.prefect_server(root / "prefect", prefect_db, net.server, PREFECT_AUTH) as api,
        servers.mlflow_server(root / "mlflow", mlflow_db, net.server, MLFLOW_ADMIN) as tracking,
        servers.redis_server(root / "redis", net.server, REDIS_PASSWORD) as lock_url,
        servers.ftp_server(root / "bucket", net.server, *FTP_LOGIN) as bucket,
    ):
        env = servers.quiet_env(
            PREFECT_API_URL=api,
            PREFECT_API_AUTH_STRING=PREFECT_AUTH,
            MLFLOW_TRACKING_URI=tracking,
            MLFLOW_TRACKING_USERNAME=MLFLOW_ADMIN[0],
            MLFLOW_TRACKING_PASSWORD=MLFLOW_ADMIN[1],
            FRESHTUNE_LOCK_URL=lock_url,
            PREFECT_HOME=str(root / "client"),
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
            FSSPEC_FTP_USERNAME=FTP_LOGIN[0],  # fsspec's own config: never in the landing URL
            FSSPEC_FTP_PASSWORD=FTP_LOGIN[1],
            FRESHTUNE_WORKER_MLFLOW_USERNAME=WORKER[0],  # for deploy, which makes that user
            FRESHTUNE_WORKER_MLFLOW_PASSWORD=WORKER[1],
        )
        overrides.append(f"deploy.landing_url={bucket}/landing")
        cfg = load_config("tiny", overrides, root / "operator")
        cluster = Cluster(net, env, overrides, cfg, root)
        cluster.cli("deploy")
        with pytest.MonkeyPatch.context() as mp:
            for key in ("URI", "USERNAME", "PASSWORD"):
                mp.setenv(f"MLFLOW_TRACKING_{key}", env[f"MLFLOW_TRACKING_{key}"])
            yield cluster


def stored(cluster: Cluster, kind: str) -> list[str]:
    from tasks import store

    return store.keys(cluster.cfg, kind)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


def test_a_drop_trains_on_the_gpu_worker_survives_its_loss_and_promotes_once(
    cluster: Cluster, demo_drops, tmp_path
):
    from tasks import store

    landed = cluster.root / "bucket" / "files" / "landing"
    with cluster.worker("cpu-1", "cpu", 0):
        with cluster.worker("gpu-1", "gpu", 1) as gpu:
            cluster.cli("drop", str(demo_drops[0]))
            wait_for(lambda: stored(cluster, store.CHECKPOINTS), 420, "no checkpoint uploaded")
            kill_tree(gpu)  # the node is lost mid-training
        with cluster.worker("gpu-2", "gpu", 2):
            [run] = cluster.wait_runs("refresh/on-data-drop", 1)
    assert run.state_type.value == "COMPLETED", (run.state_name, run.state and run.state.message)
    [drop] = landed.iterdir()  # landed in the object store; the cpu worker fetched it from there
    assert run.parameters["drop"] == f"{cluster.cfg.deploy.landing_url}/{drop.name}"
    assert "ftp-topology-pw" not in json.dumps(run.parameters)
    cached = cluster.root / "workers" / "cpu-1" / "landing" / "remote" / drop.name
    assert cached.read_bytes() == demo_drops[0].read_bytes()
    trainings = cluster.runs_of("train-on-gpu/gpu")
    assert [r.state_type.value for r in trainings] == ["CRASHED", "COMPLETED"]

    mlc = cluster.mlflow()
    assert [str(v.version) for v in mlc.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    champion = mlc.get_model_version_by_alias(MODEL, "champion")
    metrics = mlc.get_run(champion.run_id).data.metrics
    assert metrics["train_resumed_step"] >= 10  # finished from the dead worker's checkpoint
    assert stored(cluster, store.CHECKPOINTS) == []  # the committed adapter superseded them

    homes = cluster.root / "workers"
    key = champion.tags["adapter_key"]
    assert (homes / "gpu-2" / "adapters" / key / "adapter_model.safetensors").is_file()
    assert not (homes / "gpu-1" / "adapters" / key).exists()  # it never finished there
    assert not list((homes / "gpu-2").glob("snapshots/*"))  # a gpu worker needs no snapshots
    assert_stock_clients_load_the_champion(cluster, champion, tmp_path)


def assert_stock_clients_load_the_champion(cluster: Cluster, champion: Any, tmp_path: Path):
    """Stock MLflow and peft, with nothing but the tracking server, get the serving adapter."""
    import torch
    from mlflow.artifacts import download_artifacts
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = download_artifacts(
        artifact_uri=champion.source,
        dst_path=str(tmp_path / "served"),
        tracking_uri=cluster.env["MLFLOW_TRACKING_URI"],
    )
    base = AutoModelForCausalLM.from_pretrained(cluster.cfg.base_model)
    model = PeftModel.from_pretrained(base, folder)
    trained = cluster.root / "workers" / "gpu-2" / "adapters" / champion.tags["adapter_key"]
    weights = load_file(str(trained / "adapter_model.safetensors"))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(weights) > 0
    for name, value in weights.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == name]
        assert match and torch.equal(match[0], value), name


def mix_rows(manifest: dict[str, Any]) -> list[str]:
    return list(manifest["rows"])


def test_a_worker_that_never_saw_month_one_replays_it_as_one_machine_does(
    cluster: Cluster, demo_drops, one_machine: OneMachine, tmp_path
):
    with cluster.worker("cpu-2", "cpu", 3), cluster.worker("gpu-3", "gpu", 2):
        cluster.cli("drop", str(demo_drops[1]))
        runs = cluster.wait_runs("refresh/on-data-drop", 2)
    assert runs[-1].state_type.value == "COMPLETED", runs[-1].state_name
    mlc = cluster.mlflow()
    champion = mlc.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == "2"
    manifest = json.loads(
        Path(mlc.download_artifacts(champion.run_id, "mix.json", str(tmp_path))).read_text()
    )
    home = cluster.root / "workers" / "cpu-2"
    assert len(list(home.glob("snapshots/*/meta.json"))) == 2  # month 1 fetched from the store
    assert manifest["replay_rows"] > 0
    assert mix_rows(manifest) == mix_rows(one_machine.month_two_mix())


@dataclass
class OneMachine:
    """Months 1 and 2 in the embedded default (no servers, one workspace), run in the
    background while the cluster works: the reference the cluster must match."""

    proc: subprocess.Popen
    workspace: Path
    tiny_model: Path

    def month_two_mix(self) -> dict[str, Any]:
        _, err = self.proc.communicate(timeout=900)
        assert self.proc.returncode == 0, err[-3000:]
        cfg = load_config("tiny", [f"base_model={self.tiny_model}"], self.workspace)
        records = [json.loads(p.read_text()) for p in cfg.paths.cycles.glob("*.json")]
        latest = max(records, key=lambda r: r["finished_at"])
        digest = latest["mix"]["digest"]
        return json.loads((cfg.paths.root / "mixes" / f"{digest}.json").read_text())["manifest"]


@pytest.fixture(scope="module")
def one_machine(tiny_model: Path, demo_drops, tmp_path_factory) -> Iterator[OneMachine]:
    workspace = tmp_path_factory.mktemp("one-machine")
    env = servers.quiet_env(PREFECT_HOME=str(workspace / "prefect-home"))
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FRESHTUNE_LOCK_URL"):
        env.pop(key, None)
    options = f"--config tiny --workspace {workspace} --set base_model={tiny_model}"
    months = [f"{CLI} refresh {drop} {options} --set train.epochs=3" for drop in demo_drops[:2]]
    proc = subprocess.Popen(
        ["sh", "-c", " && ".join(months)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield OneMachine(proc, workspace, tiny_model)
    finally:
        servers.stop(proc)


def test_every_server_refuses_requests_without_credentials(cluster: Cluster, monkeypatch):
    """The cycles above ran with credentials; without them each server says no, and the
    preflight names the server that refused (never echoing the credentials it was given)."""
    from tasks.servers import ServerUnavailable, check_mlflow, check_prefect, check_redis

    env = cluster.env
    lock_url = env["FRESHTUNE_LOCK_URL"]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ServerUnavailable, match="MLflow tracking server .* refused the cred"):
        check_mlflow(env["MLFLOW_TRACKING_URI"], cluster.cfg.tracking.experiment)
    with pytest.raises(ServerUnavailable, match="Prefect API .* refused the credentials"):
        check_prefect(env["PREFECT_API_URL"])
    with pytest.raises(ServerUnavailable, match="Redis .*"):
        check_redis(lock_url.replace(f":{REDIS_PASSWORD}@", "@"))
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:wrong-password")
    with pytest.raises(ServerUnavailable) as wrong:
        check_prefect(env["PREFECT_API_URL"])
    assert "wrong-password" not in str(wrong.value)


def test_a_run_asking_for_weaker_settings_than_its_deployment_is_refused(cluster: Cluster):
    """With auth on everywhere: a UI user who lowers the gate and swaps the base model for one
    run gets a refusal before any work, from the policy `freshtune deploy` published."""
    from prefect.deployments import run_deployment

    weak = cluster.cfg.model_copy(
        update={
            "base_model": "/elsewhere/model",
            "gate": cluster.cfg.gate.model_copy(update={"min_gain": -2.0}),
        }
    )
    before = cluster.runs_of("refresh/on-data-drop")
    versions = cluster.mlflow().search_model_versions(f"name = '{MODEL}'")
    with cluster.worker("cpu-policy", "cpu", 0):
        with cluster.settings():
            run_deployment(
                "refresh/on-data-drop",
                parameters={
                    "drop": f"{cluster.cfg.deploy.landing_url}/month-09.jsonl",
                    "config": weak.model_dump(mode="json"),
                },
                timeout=0,
            )
        runs = cluster.wait_runs("refresh/on-data-drop", len(before) + 1)
    run = runs[-1]
    assert run.state_type.value == "FAILED", run.state_name
    assert (
        "refused by the policy" in run.state.message and "gate.min_gain=-2.0" in run.state.message
    )
    assert len(cluster.mlflow().search_model_versions(f"name = '{MODEL}'")) == len(versions)

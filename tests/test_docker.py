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


COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"


def _compose() -> dict:
    import yaml

    return yaml.safe_load(COMPOSE.read_text())


def _env_example() -> dict[str, str]:
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and line[0] != "#"]
    return dict(line.split("=", 1) for line in lines)


def test_compose_has_the_production_services_with_health_checks():
    services = _compose()["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "prefect-server",
        "mlflow",
        "deploy",
        "worker-cpu",
        "worker-gpu",
    }
    for name in ("postgres", "redis", "prefect-server", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    # The UIs on this host only: sharing them takes a TLS proxy, deliberately.
    assert services["prefect-server"]["ports"] == ["127.0.0.1:4200:4200"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    env = services["prefect-server"]["environment"]
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert env["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    mlflow = services["mlflow"]["command"]
    assert "--app-name=basic-auth" in mlflow
    assert any(arg.startswith("--backend-store-uri=postgresql+psycopg2://") for arg in mlflow)
    assert any(v.endswith(":/var/lib/mlflow") for v in services["mlflow"]["volumes"])


def test_workers_poll_their_pools_and_the_gpu_one_reserves_nvidia_devices():
    services = _compose()["services"]
    for name, pool in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        command = services[name]["command"]
        assert command[:3] == ["prefect", "worker", "start"] and pool in command
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["FRESHTUNE_LOCK_URL"].startswith("redis://")
        # Least privilege: the workers' own MLflow user, never the admin's.
        assert env["MLFLOW_TRACKING_USERNAME"].startswith("${MLFLOW_WORKER_USER:?")
        assert services[name]["build"]["dockerfile"] == "docker/worker.Dockerfile"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]
    deploy = services["deploy"]["environment"]
    assert deploy["MLFLOW_TRACKING_USERNAME"].startswith("${MLFLOW_ADMIN_USER:?")
    assert deploy["FRESHTUNE_WORKER_MLFLOW_USERNAME"].startswith("${MLFLOW_WORKER_USER:?")
    # Workers start only after `deploy` passed (it refuses the example's placeholders).
    for name in ("worker-cpu", "worker-gpu"):
        assert services[name]["depends_on"] == {
            "deploy": {"condition": "service_completed_successfully"}
        }


def test_every_variable_is_in_env_example_and_no_secret_is_in_the_repo():
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)[}:]", text))
    # Every secret is required: unset or empty stops compose, naming it (an empty
    # PREFECT_AUTH_STRING would turn the server's auth off).
    optional = set(re.findall(r"\$\{(\w+):-", text))
    # Optional: empty means no alerts, or the default UI address.
    assert optional == {"HF_TOKEN", "FRESHTUNE_ALERT_WEBHOOKS", "PREFECT_UI_URL"}
    assert not re.findall(r"\$\{\w+\}", text)
    example = _env_example()
    assert used <= set(example), used - set(example)
    assert set(example) <= used, set(example) - used  # nothing stale
    for key, value in example.items():
        if re.search("PASSWORD|SECRET|AUTH_STRING", key):
            assert "change-me" in value, key
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "docker/.env" in ignored and ".env" in (ROOT / ".dockerignore").read_text()


def test_files_the_compose_mounts_exist():
    for service in _compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), volume


def test_workers_share_no_volume_and_cache_in_their_own_image_volume():
    services = _compose()["services"]
    workers = [s for name, s in services.items() if s.get("image") == "freshtune-worker:0.1.0"]
    mounted = [v.split(":")[0] for s in workers for v in s.get("volumes", [])]
    named = [v for v in mounted if not v.startswith((".", "/"))]
    assert len(named) == len(set(named)), named  # no named volume mounted twice
    for name in ("deploy", "worker-cpu", "worker-gpu"):
        assert not services[name].get("volumes"), name  # the image's anonymous volume only
    home = services["worker-cpu"]["environment"]["FRESHTUNE_HOME"]
    [dockerfile] = DOCKERFILES
    volumes = [args for op, args in instructions(dockerfile) if op == "VOLUME"]
    assert volumes == [f'["{home}"]']
    assert f"FRESHTUNE_HOME={home}" in dockerfile.read_text()

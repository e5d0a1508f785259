"""The work pools' job templates as a worker renders them (Prefect's own templating, with the
defaults an operator starts from): credentials only from a Kubernetes Secret, a per-pod cache
behind FRESHTUNE_HOME, GPU requests and placement on the gpu pool."""

import json
import re
from pathlib import Path

import pytest
import yaml

from deployments.deploy import POOLS_DIR

SECRET = POOLS_DIR.parent / "kubernetes" / "secret.example.yaml"
CREDENTIAL = re.compile(r"PASSWORD|TOKEN|AUTH|SECRET|://[^/]*@")


def rendered(kind: str, **values) -> dict:
    from prefect.utilities.templating import apply_values

    template = json.loads((POOLS_DIR / f"{kind}.json").read_text(encoding="utf-8"))
    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    return apply_values(template["job_configuration"], {**defaults, **values})


def pod(kind: str, **values) -> dict:
    return rendered(kind, **values)["job_manifest"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("kind", ["kubernetes", "kubernetes-gpu"])
def test_settings_and_credentials_come_from_a_secret_never_the_template(kind):
    config = rendered(kind)
    container = config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "freshtune-credentials"}}]
    text = (POOLS_DIR / f"{kind}.json").read_text(encoding="utf-8")
    for key, value in config["env"].items():
        assert not CREDENTIAL.search(key) and not CREDENTIAL.search(value), key
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "FRESHTUNE_LOCK_URL"):
        assert f'"{name}"' not in text  # from the Secret only
    secret = yaml.safe_load(SECRET.read_text(encoding="utf-8"))
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "freshtune-credentials"
    assert {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FRESHTUNE_LOCK_URL"} <= set(
        secret["stringData"]
    )
    assert all("change-me" in v for k, v in secret["stringData"].items() if CREDENTIAL.search(k))


@pytest.mark.parametrize("kind", ["kubernetes", "kubernetes-gpu"])
def test_freshtune_home_is_a_per_pod_cache_volume_the_operator_can_swap(kind):
    spec = pod(kind)
    home = rendered(kind)["env"]["FRESHTUNE_HOME"]
    [mount] = spec["containers"][0]["volumeMounts"]
    [volume] = spec["volumes"]
    assert volume["name"] == mount["name"] and Path(home).is_relative_to(mount["mountPath"])
    assert "emptyDir" in volume  # nothing shared between pods by default
    claim = {"name": "freshtune-cache", "persistentVolumeClaim": {"claimName": "gpu-cache"}}
    assert pod(kind, cache_volume=claim)["volumes"] == [claim]


def test_the_gpu_pool_requests_gpus_on_gpu_nodes_and_sizes_are_settable():
    spec = pod("kubernetes-gpu", gpu_count=2, memory_request="48Gi", cpu_request="8")
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 2
    assert resources["requests"]["memory"] == "48Gi" and resources["requests"]["cpu"] == "8"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    cpu = pod("kubernetes")
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu


def test_the_docker_pool_mounts_no_shared_volume():
    config = rendered("docker")
    assert config["volumes"] == [] and config["env"]["FRESHTUNE_HOME"].startswith("/cache/")

from pathlib import Path

import pytest

from tasks import registry


def _version(cfg, tmp_path: Path, name: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"not really weights")
    run_id = registry.open_run(cfg, name * 8, {})
    registry.log_artifacts(cfg, run_id, folder, "adapter")
    return registry.register_adapter(cfg, run_id, {"adapter_key": name})


def test_promotion_moves_champion_and_previous(tiny_config, tmp_path: Path):
    cfg = tiny_config()
    assert registry.get_champion(cfg) is None
    v1, v2 = _version(cfg, tmp_path, "a"), _version(cfg, tmp_path, "b")
    registry.promote(cfg, v1, expected=None)
    first = registry.get_champion(cfg)
    assert first.version == v1
    registry.promote(cfg, v2, expected=first)
    assert registry.get_champion(cfg).version == v2
    from mlflow import MlflowClient

    mlc = MlflowClient(registry.tracking_uri(cfg))
    previous = mlc.get_model_version_by_alias(cfg.tracking.model_name, "previous")
    assert str(previous.version) == v1


def test_stale_comparison_does_not_move_the_alias(tiny_config, tmp_path: Path):
    cfg = tiny_config()
    v1, v2 = _version(cfg, tmp_path, "a"), _version(cfg, tmp_path, "b")
    registry.promote(cfg, v1, expected=None)
    with pytest.raises(registry.ChampionMoved):
        registry.promote(cfg, v2, expected=None)  # compared with "no champion": stale
    assert registry.get_champion(cfg).version == v1


def test_an_unreachable_tracking_server_is_an_error_naming_it_never_no_champion(
    tiny_config, monkeypatch
):
    from tests.helpers.servers import free_port

    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ops:s3cret@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(registry.TrackingUnavailable) as raised:
        registry.get_champion(tiny_config())
    message = str(raised.value)
    assert f"http://127.0.0.1:{port}" in message and "s3cret" not in message


def test_champion_adapter_is_fetched_from_mlflow_when_not_local(tiny_config, tmp_path: Path):
    cfg = tiny_config()
    registry.promote(cfg, _version(cfg, tmp_path, "a"), expected=None)
    champion = registry.get_champion(cfg)
    local = registry.local_adapter(cfg, champion)
    assert local == cfg.paths.adapters / "a"
    assert (local / "adapter_model.safetensors").read_bytes() == b"not really weights"


def _snapshot(tmp_path: Path, digest: str):
    from tasks.snapshot import Snapshot

    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "meta.json").write_text('{"curation": {"curate_kept": 10}}')
    return Snapshot(digest, folder, 1, "month-01.jsonl")


def test_a_flow_run_started_again_goes_on_in_its_cycle_run_and_abandons_others(
    tiny_config, tmp_path: Path, monkeypatch
):
    cfg = tiny_config()
    snapshot = _snapshot(tmp_path, "d" * 64)
    mlc = registry.client(cfg)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "run-a")  # prefect.runtime outside a flow
    killed = registry.open_cycle_run.fn(snapshot, None, cfg)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "run-b")
    suspended = registry.open_cycle_run.fn(snapshot, None, cfg)
    assert suspended != killed and mlc.get_run(killed).info.status == "FAILED"
    stray = registry.open_run(cfg, snapshot.digest, {"freshtune.flow_run_id": "run-c"})
    # run-b resumed after its review: from the top again, in the same MLflow run.
    assert registry.open_cycle_run.fn(snapshot, None, cfg) == suspended
    assert mlc.get_run(suspended).info.status == "RUNNING"
    assert mlc.get_run(stray).info.status == "FAILED"
    assert mlc.get_run(stray).data.tags["freshtune.abandoned"] == "true"
    assert "freshtune.abandoned" not in mlc.get_run(suspended).data.tags

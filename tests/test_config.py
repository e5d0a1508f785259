from pathlib import Path

import pytest

from freshtune.config import PRESETS_DIR, ConfigError, list_presets, load_config


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_loads_and_says_how_to_run_it(preset: str, tmp_path: Path):
    text = (PRESETS_DIR / f"{preset}.yaml").read_text()
    assert text.startswith("#") and "Run:" in text.split("\n\n")[0]
    cfg = load_config(preset, ["base_model=/some/checkpoint"], tmp_path)
    assert cfg.workspace == tmp_path


def test_overrides_reach_nested_fields_with_yaml_types(tmp_path: Path):
    cfg = load_config("demo", ["train.epochs=2", "gate.min_gain=0.25", "train.lora.r=8"], tmp_path)
    assert (cfg.train.epochs, cfg.gate.min_gain, cfg.train.lora.r) == (2, 0.25, 8)


def test_misspelt_field_names_the_field_and_suggests_the_fix(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["train.epoch=3"], tmp_path)
    assert "train.epoch" in str(err.value) and "did you mean train.epochs" in str(err.value)


def test_missing_base_model_says_how_to_set_it(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"base_model.*--set base_model="):
        load_config("tiny", [], tmp_path)


def test_wrong_type_and_cross_field_rule_are_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config("demo", ["train.batch_size=many"], tmp_path)
    with pytest.raises(ConfigError, match="eval.max_new_tokens"):
        load_config("demo", ["eval.max_new_tokens=500"], tmp_path)


def test_workspace_precedence_flag_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FRESHTUNE_HOME", str(tmp_path / "env"))
    assert load_config("demo").workspace == tmp_path / "env"
    assert load_config("demo", workspace=tmp_path / "flag").workspace == tmp_path / "flag"


def test_on_a_worker_its_own_home_replaces_the_starters_workspace(tmp_path, monkeypatch):
    started = load_config("demo", [], tmp_path / "operator")  # the workspace in the parameters
    monkeypatch.delenv("FRESHTUNE_HOME", raising=False)
    assert started.on_this_worker().workspace == tmp_path / "operator"  # one machine
    monkeypatch.setenv("FRESHTUNE_HOME", str(tmp_path / "gpu-worker"))
    on_worker = started.on_this_worker()
    assert on_worker.paths.adapters == tmp_path / "gpu-worker" / "adapters"
    assert on_worker.model_dump(exclude={"workspace"}) == started.model_dump(exclude={"workspace"})


def test_known_base_model_resolves_inside_the_workspace(tmp_path: Path):
    cfg = load_config("demo", [], tmp_path)
    assert (
        Path(cfg.resolved_base_model()) == tmp_path.resolve() / "models" / "smollm2-135m-instruct"
    )


def test_fingerprint_changes_with_the_section_it_covers(tmp_path: Path):
    a = load_config("demo", [], tmp_path)
    b = load_config("demo", ["train.epochs=9"], tmp_path)
    assert a.fingerprint("train") != b.fingerprint("train")
    assert a.fingerprint("eval") == b.fingerprint("eval")


def test_a_cycle_takes_continue_settings_only_when_it_continues_and_replay_passes_on_replay():
    from freshtune.config import TrainSettings

    settings = TrainSettings(
        epochs=5,
        continue_epochs=3,
        learning_rate=1e-3,
        continue_learning_rate=5e-4,
        replay_passes=1.0,
    )
    first = settings.for_cycle(continues=False)
    assert (first.epochs, first.learning_rate) == (5, 1e-3)
    continuing = settings.for_cycle(continues=True)
    assert (continuing.epochs, continuing.learning_rate, continuing.replay_passes) == (3, 5e-4, 1)
    assert continuing.continue_epochs is None and continuing.continue_learning_rate is None
    assert settings.for_cycle(continues=True, replays=False).replay_passes is None
    unset = TrainSettings(epochs=5, learning_rate=1e-3).for_cycle(continues=True)
    assert (unset.epochs, unset.learning_rate) == (5, 1e-3)  # null: the first cycle's


def test_the_lock_url_is_a_secret_that_never_serialises(tmp_path: Path, monkeypatch):
    from freshtune.config import FreshtuneConfig
    from tasks.registry import flatten

    url = "redis://:hunter2@redis.internal:6379/0"
    cfg = load_config("tiny", ["base_model=/m", f"deploy.lock_url={url}"], tmp_path)
    assert cfg.deploy.lock_url_value() == url  # in this process it works as given
    shown = [cfg.model_dump_json(), str(flatten(cfg.model_dump(mode="json"))), repr(cfg)]
    assert not any("hunter2" in text for text in shown)
    # A config that travelled as a deployment parameter falls back to the worker's own.
    travelled = FreshtuneConfig.model_validate_json(cfg.model_dump_json())
    assert travelled.deploy.lock_url is None
    monkeypatch.setenv("FRESHTUNE_LOCK_URL", url)
    assert travelled.deploy.lock_url_value() == url


def test_a_landing_url_with_a_password_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="must not carry a password"):
        load_config(
            "tiny", ["base_model=/m", "deploy.landing_url=ftp://u:pw@host/landing"], tmp_path
        )
    assert load_config("tiny", ["base_model=/m", "deploy.landing_url=s3://b/landing"], tmp_path)

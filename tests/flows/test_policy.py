"""A run cannot weaken the safety settings its deployment (or its worker) was given."""

import json

import pytest

from flows.refresh import refresh
from freshtune.policy import VARIABLE, Policy, PolicyRefused
from tasks import registry


@pytest.fixture
def deployed_policy():
    """The variable `freshtune deploy` writes, removed after the test (the server is shared)."""
    from prefect.variables import Variable

    def publish(cfg) -> Policy:
        policy = Policy.of(cfg)
        Variable.set(VARIABLE, policy.model_dump(mode="json"), overwrite=True)
        return policy

    yield publish
    Variable.unset(VARIABLE)


def test_a_run_asking_for_weaker_settings_is_refused_before_any_work(
    tiny_config, demo_drops, deployed_policy, tmp_path
):
    deployed = tiny_config("review.mode=pause", "gate.min_gain=0.0", "gate.undecided=review")
    deployed_policy(deployed)
    weaker = tiny_config(
        "review.mode=auto",
        "gate.min_gain=-1.0",
        "gate.undecided=accept",
        f"base_model={tmp_path / 'somewhere-else'}",
        f"eval.general_file={demo_drops[1]}",
    )
    with pytest.raises(PolicyRefused) as refused:
        refresh(str(demo_drops[0]), weaker)  # and from outside the landing folder
    said = str(refused.value)
    assert said.startswith(f"run refused by the policy in the Prefect variable {VARIABLE}")
    for rule in (
        "review.mode=auto",
        "gate.min_gain=-1.0 is weaker than the policy's 0.0",
        "gate.undecided=accept",
        "somewhere-else is not one of",
        "eval.general_file=",
        f"drop {demo_drops[0]} is not under",
    ):
        assert rule in said
    # Nothing was read, written, trained or registered.
    assert not list(weaker.paths.snapshots.glob("*")) and not list(
        weaker.paths.quarantine.glob("*")
    )
    assert registry.get_champion(weaker) is None


def test_stricter_settings_pass_and_the_worker_policy_wins(
    tiny_config, demo_drops, deployed_policy, monkeypatch, tmp_path
):
    from tasks.policy import enforce_policy

    cfg = tiny_config("gate.min_gain=-0.5")
    deployed_policy(cfg)
    drop = cfg.paths.landing / "month-01.jsonl"
    enforce_policy(tiny_config("gate.min_gain=0.1", "review.mode=pause"), str(drop))  # stricter
    worker = {"human_review": True}
    monkeypatch.setenv("FRESHTUNE_POLICY", json.dumps(worker))
    with pytest.raises(PolicyRefused, match="the worker's FRESHTUNE_POLICY.*review.mode=auto"):
        enforce_policy(cfg, str(drop))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("human_review: false\nbase_models: [other]\n")
    monkeypatch.setenv("FRESHTUNE_POLICY", str(policy_file))
    with pytest.raises(PolicyRefused, match=r"base_model=.* is not one of \['other'\]"):
        enforce_policy(cfg, str(drop))


def test_without_a_policy_nothing_changes():
    from tasks.policy import current_policy

    assert current_policy() == (None, "")

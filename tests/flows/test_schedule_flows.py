"""The flows behind the deployments, on the embedded default: monthly-refresh, decay-monitor,
and a refresh that finds its drop claimed by another run."""

from pathlib import Path

from flows.decay import decay_monitor
from flows.monthly import monthly_refresh
from flows.refresh import refresh
from tasks import registry
from tasks.landing import land
from tasks.locks import claim


def test_monthly_refresh_takes_pending_drops_in_order_past_a_rejected_one(
    tiny_config, demo_drops, tmp_path
):
    cfg = tiny_config("data.landed_retention_days=0")  # raw drops go once done with
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"id": "1", "messages": [{"role": "user"')
    first, broken, second = land(demo_drops[0], cfg), land(bad, cfg), land(demo_drops[1], cfg)

    state = monthly_refresh(cfg, return_state=True)
    assert state.is_failed() and state.name == "Rejected"  # no cycle-failed alert for it
    assert "1 of 3 drops rejected" in state.message and "broken.jsonl" in state.message
    for landed in (first, second):
        assert (cfg.paths.cycles / f"{landed.digest[:16]}.json").exists()
    assert (cfg.paths.quarantine / broken.digest[:16] / "REJECTED.md").exists()
    champion = registry.get_champion(cfg)
    assert champion is not None and champion.tags["drop_digest"] == second.digest
    assert not any(Path(landed.url).exists() for landed in (first, broken, second))

    again = monthly_refresh(cfg, return_state=True)  # nothing pending: nothing retrained
    assert again.is_completed() and again.result() == []


def test_decay_monitor_scores_the_champion_on_pending_drops_and_raises_the_alarm(
    tiny_config, demo_drops
):
    healthy = tiny_config("deploy.decay_min_accuracy=0.0")
    assert decay_monitor(healthy) == {"decayed": False, "reason": "no champion yet"}
    refresh(str(demo_drops[0]), healthy)
    land(demo_drops[1], healthy)

    calm = decay_monitor(healthy)
    assert calm["decayed"] is False and calm["event_id"] == ""
    assert "month-02.jsonl" in calm["source"] and calm["questions"] > 0

    strict = healthy.model_copy(
        update={"deploy": healthy.deploy.model_copy(update={"decay_min_accuracy": 1.0})}
    )
    alarm = decay_monitor(strict)
    assert alarm["decayed"] is True and alarm["event_id"]
    assert alarm["accuracy"] == calm["accuracy"] < 1.0


def test_a_drop_claimed_by_another_run_is_left_to_it(tiny_config, demo_drops):
    from freshtune.files import file_digest

    cfg = tiny_config()
    digest = file_digest(demo_drops[0])
    with claim(f"drop-{digest[:16]}", cfg):  # another worker holds it
        record = refresh(str(demo_drops[0]), cfg)
    assert record["verdict"] == "in-progress-elsewhere" and record["in_progress_by"]
    assert not list(cfg.paths.cycles.glob("*.json"))
    assert registry.get_champion(cfg) is None

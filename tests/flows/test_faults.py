"""The fault matrix: each scenario names the stage, the fault, and what holds afterwards.

`docs/faults.md` is generated from SCENARIOS (`python -m tests.flows.test_faults`); a test
keeps the two equal, so the table cannot promise what no test checks.

Kills are real SIGKILLs of a `freshtune refresh` process (no hook, no `finally` runs), one
per stage, chained on one drop and one workspace: each attempt dies a stage later than the
one before, then a clean run must finish the cycle with one version and one record. Full
disks are real tmpfs mounts; dead servers are ports nothing listens on.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.refresh import refresh
from freshtune.config import load_config
from freshtune.errors import DropRejected
from tasks import registry, servers, store
from tasks.locks import claim
from tasks.snapshot import list_snapshots
from tests.helpers.disk import full_disk
from tests.helpers.forked import forkserver, run_cli
from tests.helpers.servers import free_port, prefect_at

DOC = Path(__file__).resolve().parents[2] / "docs" / "faults.md"


@dataclass(frozen=True)
class Scenario:
    id: str
    stage: str
    fault: str
    holds: str


# After every kill: the landed drop, earlier snapshots, adapters and the registry intact;
# the champion unmoved, or moved once and to this drop's version.
_KILLED = "killed (SIGKILL)"
KILLS = [
    Scenario("stage", "stage", _KILLED, "nothing written; a rerun stages again"),
    Scenario("validate", "validate", _KILLED, "gate results only; not quarantined"),
    Scenario("curate", "curate", _KILLED, "the snapshot is committed once; a rerun reuses it"),
    Scenario("mix", "mix", _KILLED, "no model version; a rerun rebuilds the same mix"),
    Scenario(
        "checkpoint",
        "train (mid-training)",
        _KILLED,
        "the stored checkpoint survives; a rerun resumes from it, no version yet",
    ),
    Scenario("train", "train", _KILLED, "the adapter is stored; a rerun trains nothing again"),
    Scenario("evaluate", "evaluate", _KILLED, "no version; a rerun reuses the cached answers"),
    Scenario("register", "register", _KILLED, "one version; a rerun registers no second one"),
    Scenario("review", "review", _KILLED, "one version, champion unmoved"),
    Scenario("promote", "promote", _KILLED, "champion moved once; a rerun does not move it again"),
    Scenario("record", "record", _KILLED, "one cycle record; a rerun reports the cycle done"),
]
MALFORMED = [
    Scenario("deep-nesting", "stage", "JSON nested 5000 deep", "rejected `nesting`, quarantined"),
    Scenario(
        "lone-surrogate", "stage", "unpaired \\ud800 escape", "rejected `characters`, quarantined"
    ),
    Scenario("control-char", "stage", "\\u0007 in a prompt", "rejected `characters`, quarantined"),
    Scenario("zip-bomb", "stage", "zip unpacking 1000x", "rejected `compression`, no unpacking"),
    Scenario("traversal", "stage", "tar member `../x.jsonl`", "rejected `archive`, no writes"),
    Scenario("truncated", "stage", "last line cut off", "rejected `truncated` naming the line"),
    Scenario("latin-1", "stage", "latin-1 bytes", "rejected `encoding` naming the line and fix"),
    Scenario("odd-name", "stage", "file name with spaces, `#` and `ü`", "passes the gate as is"),
    Scenario("schema", "validate", "a split the suite refuses", "rejected by the GX rule, line"),
]
DISKS = [
    Scenario("disk-landing", "stage", "disk full unpacking", "an error; not quarantined; rerun ok"),
    Scenario("disk-snapshot", "curate", "disk full writing the snapshot", "nothing committed"),
    Scenario("disk-adapter", "train", "disk full writing checkpoints", "no adapter; rerun ok"),
    Scenario("disk-quarantine", "quarantine", "disk full", "the rejection still says why"),
]
SERVERS = [
    Scenario("mlflow-down", "preflight", "MLflow unreachable", "fails in seconds naming it"),
    Scenario("redis-down", "preflight", "Redis unreachable", "fails in seconds naming it"),
    Scenario("prefect-down", "refresh", "Prefect API unreachable", "fails in seconds naming it"),
    Scenario("prefect-down-drop", "drop", "Prefect API unreachable", "not landed; names it"),
    Scenario("prefect-down-watch", "watch", "Prefect API unreachable", "fails naming it"),
]
# MLflow (tracking, registry and artifact store) going away mid-cycle: a real server behind
# a proxy that stops answering at that point, then comes back for the rerun.
_RERUN = "a rerun completes: one version, one FINISHED cycle run"
OUTAGES = [
    Scenario(
        "mlflow-down-in-training",
        "train (mid-training)",
        "MLflow gone after the first checkpoint",
        f"training goes on; fails naming MLflow; no version; {_RERUN}",
    ),
    Scenario(
        "mlflow-down-after-training",
        "evaluate",
        "MLflow gone once the adapter is stored",
        f"fails naming MLflow; no version; {_RERUN}",
    ),
    Scenario(
        "mlflow-down-in-alias-move",
        "promote",
        "MLflow gone after `champion` moved, before the version is tagged served",
        "fails naming MLflow; champion moved once; a rerun tags it, no second move",
    ),
]
# The Prefect API going away when the cycle needs it most: the promotion's concurrency slot.
PREFECT_OUTAGES = [
    Scenario(
        "prefect-down-in-promotion",
        "promote",
        "Prefect API gone once the review approved",
        f"fails in seconds naming the Prefect API; champion unmoved; {_RERUN}",
    ),
]
OTHERS = [
    Scenario("nan-loss", "train", "a weight turns NaN", "stopped, named; no version; rerun ok"),
    Scenario("same-drop-in-review", "claim", "the drop again while held", "stands down"),
    Scenario("two-drops-at-once", "all", "two drops concurrently", "two cycles, two sequences"),
    Scenario(
        "rollback-racing-promotion",
        "promote",
        "a rollback while a promotion holds the slot",
        "the rollback waits, then moves the alias",
    ),
]
SCENARIOS = {
    "kill": KILLS,
    "malformed": MALFORMED,
    "disk": DISKS,
    "server": SERVERS,
    "outage": OUTAGES,
    "prefect-outage": PREFECT_OUTAGES,
    "other": OTHERS,
}


def table() -> str:
    lines = [
        "# Fault matrix",
        "",
        "Generated from `tests/flows/test_faults.py` (`python -m tests.flows.test_faults`);",
        "each row is one test case. After every fault: a clear error naming the cause, the",
        "landed drop, earlier snapshots, adapters and the registry intact, the champion",
        "unmoved or moved exactly once, and a rerun of the same drop completes.",
        "",
        "| test | stage | fault | what holds |",
        "|---|---|---|---|",
    ]
    for group, scenarios in SCENARIOS.items():
        test = {
            "kill": "test_kill_after",
            "malformed": "test_malformed_drop",
            "disk": "test_full_disk",
            "server": "test_server_down",
            "outage": "test_mlflow_outage",
            "prefect-outage": "test_prefect_outage",
            "other": "test_other",
        }[group]
        lines += [f"| `{test}[{s.id}]` | {s.stage} | {s.fault} | {s.holds} |" for s in scenarios]
    return "\n".join(lines) + "\n"


def test_the_table_in_docs_is_the_matrix_tested_here():
    assert sum(map(len, SCENARIOS.values())) >= 30
    assert DOC.read_text(encoding="utf-8") == table(), "run python -m tests.flows.test_faults"


# --- kills: one chained drop -------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tiny_model, demo_drops, tmp_path_factory, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("kills")
    drop = root / "month-01.jsonl"
    shutil.copy(demo_drops[0], drop)
    args = ["--set", f"base_model={tiny_model}", "--set", "train.save_steps=2"]
    args += ["-w", str(root / "ws")]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the forkserver keeps it
        context = forkserver()
        warm = context.Process(target=time.sleep, args=(0,))  # the server starts with this env
        warm.start()
        warm.join()
    cfg = load_config("tiny", [f"base_model={tiny_model}", "train.save_steps=2"], root / "ws")
    return {
        "context": context,
        "drop": drop,
        "bytes": drop.read_bytes(),
        "args": args,
        "cfg": cfg,
        "log": root / "cli.log",
    }


# What exists after a kill at each point: snapshots, adapters, versions, champion, records.
AFTER = {
    "stage": (0, 0, 0, False, 0),
    "validate": (0, 0, 0, False, 0),
    "curate": (1, 0, 0, False, 0),
    "mix": (1, 0, 0, False, 0),
    "checkpoint": (1, 0, 0, False, 0),
    "train": (1, 1, 0, False, 0),
    "evaluate": (1, 1, 0, False, 0),
    "register": (1, 1, 1, False, 0),
    "review": (1, 1, 1, False, 0),
    "promote": (1, 1, 1, True, 0),
    "record": (1, 1, 1, True, 1),
}


def _state(cfg) -> tuple[int, int, int, bool, int]:
    versions = _versions(cfg)
    champion = registry.get_champion(cfg)
    assert champion is None or champion.version in versions  # never some other version
    return (
        len(store.keys(cfg, store.SNAPSHOTS)),
        len(store.keys(cfg, store.ADAPTERS)),
        len(versions),
        champion is not None,
        len(store.keys(cfg, store.CYCLES)),
    )


def _versions(cfg) -> list[str]:
    found = MlflowClient(registry.tracking_uri(cfg)).search_model_versions(
        f"name='{cfg.tracking.model_name}'"
    )
    return [str(mv.version) for mv in found]


@pytest.mark.parametrize("point", [s.id for s in KILLS])
def test_kill_after(chain, point):
    cfg = chain["cfg"]
    code = run_cli(
        chain["context"],
        ["refresh", str(chain["drop"]), "--config", "tiny", *chain["args"]],
        chain["log"],
        {"FRESHTUNE_FAULT": f"{point}:kill"},
    )
    assert code == -9, chain["log"].read_text()[-3000:]
    assert chain["drop"].read_bytes() == chain["bytes"]
    assert not list(cfg.paths.quarantine.glob("*"))  # a crash is not the drop's fault
    assert _state(cfg) == AFTER[point]
    if point == "checkpoint":
        assert store.keys(cfg, store.CHECKPOINTS), "the first checkpoint was not stored"
    if point == "train":
        assert not store.keys(cfg, store.CHECKPOINTS)  # superseded by the stored adapter


def test_after_every_kill_a_clean_run_finishes_the_one_cycle(chain):
    cfg = chain["cfg"]
    code = run_cli(
        chain["context"],
        ["refresh", str(chain["drop"]), "--config", "tiny", *chain["args"]],
        chain["log"],
    )
    assert code == 0, chain["log"].read_text()[-3000:]
    assert _state(cfg) == (1, 1, 1, True, 1)
    runs = MlflowClient(registry.tracking_uri(cfg)).search_runs(
        [registry.experiment_id(cfg)], "tags.`freshtune.drop_digest` != ''"
    )
    statuses = sorted(r.info.status for r in runs)
    assert statuses.count("FINISHED") == 1 and set(statuses) == {"FINISHED", "FAILED"}
    [record] = [json.loads(p.read_text()) for p in cfg.paths.cycles.glob("*.json")]
    assert record["promoted"] and record["version"] == registry.get_champion(cfg).version


# --- malformed drops ---------------------------------------------------------------------


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("drop.jsonl", b"\n" * (8 << 20))
    return path


def _traversal(path: Path) -> Path:
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("../x.jsonl")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"{}\n"))
    return path


def _malformed(kind: str, tmp: Path, good: Path) -> tuple[Path, str | None]:
    """The drop and the rule that must reject it (None: it must pass)."""
    lines = good.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[5])
    edits = {
        "deep-nesting": ("[" * 5000 + "]" * 5000, "nesting"),
        "lone-surrogate": (
            json.dumps(row).replace('"content": "', '"content": "\\ud800', 1),
            "characters",
        ),
        "control-char": (
            json.dumps(row).replace('"content": "', '"content": "\\u0007', 1),
            "characters",
        ),
    }
    if kind in edits:
        line, rule = edits[kind]
        lines[5] = line
        path = tmp / f"{kind}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path, rule
    if kind == "zip-bomb":
        return _zip_bomb(tmp / "bomb.zip"), "compression"
    if kind == "traversal":
        return _traversal(tmp / "traversal.tar.gz"), "archive"
    if kind == "truncated":
        path = tmp / "cut.jsonl"
        path.write_text("\n".join(lines)[:-10], encoding="utf-8")
        return path, "truncated"
    if kind == "latin-1":
        path = tmp / "latin.jsonl"
        lines[5] = json.dumps(row, ensure_ascii=False).replace('"content": "', '"content": "é', 1)
        path.write_bytes("\n".join(lines).encode("latin-1", "replace") + b"\n")
        return path, "encoding"
    if kind == "odd-name":
        path = tmp / "drop #1 für Q3.jsonl"
        shutil.copy(good, path)
        return path, None
    row["split"] = "holdout"
    lines[5] = json.dumps(row)
    path = tmp / "schema.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, "expect_column_values_to_be_in_set"


@pytest.mark.parametrize("kind", [s.id for s in MALFORMED])
def test_malformed_drop(kind, tiny_config, demo_drops, tmp_path):
    cfg = tiny_config()
    drop, rule = _malformed(kind, tmp_path, demo_drops[0])
    before = drop.read_bytes()
    if rule is None:
        from tasks.datagate import check_drop

        outcome = check_drop(drop, cfg)
        assert outcome.passed and outcome.rejection is None
        return
    with pytest.raises(DropRejected) as caught:
        refresh(str(drop), cfg)
    assert caught.value.rule == rule and drop.name in str(caught.value)
    [kept] = cfg.paths.quarantine.iterdir()
    assert (kept / drop.name).read_bytes() == before and (kept / "REJECTED.md").is_file()
    assert not store.keys(cfg, store.SNAPSHOTS) and not _versions(cfg)
    assert not list((cfg.paths.landing / "staging").glob("*/*"))  # nothing left unpacked


# --- full disks ----------------------------------------------------------------------------


def _archive(drop: Path, tmp: Path) -> Path:
    path = tmp / "drop.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(drop, "drop.jsonl")
    return path


@pytest.mark.parametrize("where", [s.id for s in DISKS])
def test_full_disk(where, tiny_config, demo_drops, tmp_path):
    cfg = tiny_config()
    if where == "disk-quarantine":
        drop, _ = _malformed("schema", tmp_path, demo_drops[0])
        with full_disk(cfg.paths.quarantine, 16), pytest.raises(DropRejected) as caught:
            refresh(str(drop), cfg)
        assert "expect_column_values_to_be_in_set" in str(caught.value)
        assert "could not be quarantined" in str(caught.value) and drop.is_file()
        return
    drop = _archive(demo_drops[0], tmp_path) if where == "disk-landing" else demo_drops[0]
    folder = {
        "disk-landing": cfg.paths.landing / "staging",
        "disk-snapshot": cfg.paths.snapshots,
        "disk-adapter": cfg.paths.adapters,
    }[where]
    with full_disk(folder, 16), pytest.raises(OSError, match="No space left"):
        refresh(str(drop), cfg)
    assert not list(cfg.paths.quarantine.glob("*"))  # a full disk is not the drop's fault
    assert not _versions(cfg) and registry.get_champion(cfg) is None
    if where == "disk-snapshot":
        assert not store.keys(cfg, store.SNAPSHOTS)
    if where == "disk-adapter":
        assert not store.keys(cfg, store.ADAPTERS)
        assert refresh(str(drop), cfg)["promoted"]  # space again: the cycle completes


# --- servers ------------------------------------------------------------------------------


_COMMANDS = {"prefect-down-drop": "drop", "prefect-down-watch": "watch"}


@pytest.mark.parametrize("server", [s.id for s in SERVERS])
def test_server_down(server, tiny_config, demo_drops, monkeypatch, tiny_model):
    from contextlib import ExitStack

    from typer.testing import CliRunner

    from freshtune.cli import app

    port, cfg = free_port(), tiny_config()
    command = _COMMANDS.get(server, "refresh")
    args = ["watch", "--once"] if command == "watch" else [command, str(demo_drops[0])]
    args += ["--config", "tiny", "--set", f"base_model={tiny_model}", "-w", str(cfg.workspace)]
    named = {"mlflow-down": "MLflow tracking server", "redis-down": "Redis"}
    name = named.get(server, "Prefect API")
    with ExitStack() as stack:
        if server == "mlflow-down":
            monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ops:s3cret@127.0.0.1:{port}")
        elif server == "redis-down":
            args += ["--set", f"deploy.lock_url=redis://:s3cret@127.0.0.1:{port}/0"]
        else:
            dead = f"http://127.0.0.1:{port}/api"
            monkeypatch.setenv("PREFECT_API_URL", dead)
            stack.enter_context(prefect_at(dead))
        start = time.monotonic()
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and time.monotonic() - start < 30, result.output
    assert f"{name} at " in result.output and f"127.0.0.1:{port}" in result.output
    assert "s3cret" not in result.output
    assert not list(cfg.paths.quarantine.glob("*")) and not list(cfg.paths.snapshots.glob("*"))
    assert not list(cfg.paths.landing.glob("*.jsonl"))  # nothing landed, nothing announced


# --- MLflow outages mid-cycle -------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_proxy(tmp_path_factory):
    """A real MLflow server (PostgreSQL, served artifacts) reached through a proxy that a
    test cuts at a fault point and restores for the rerun."""
    from urllib.parse import urlparse

    from tests.helpers.servers import TcpProxy, mlflow_server, postgres_database

    root = tmp_path_factory.mktemp("mlflow-outage")
    with postgres_database("freshtune_faults") as db, mlflow_server(root, db) as url:
        where = urlparse(url)
        proxy = TcpProxy((where.hostname, where.port))
        yield proxy
        proxy.cut()


_CUT_AT = {
    "mlflow-down-in-training": "checkpoint",
    "mlflow-down-after-training": "train",
    "mlflow-down-in-alias-move": "alias",
}


@pytest.mark.parametrize("when", [s.id for s in OUTAGES])
def test_mlflow_outage(when, mlflow_proxy, tiny_config, demo_drops, monkeypatch):
    from freshtune import faults

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_proxy.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail in seconds, not minutes
    names = [f"tracking.experiment={when}", f"tracking.model_name={when}"]
    steps = 10 if when == "mlflow-down-in-training" else 1000  # each checkpoint is an upload
    cfg = tiny_config(*names, f"train.save_steps={steps}")
    faults.when(_CUT_AT[when], mlflow_proxy.cut)
    try:
        with pytest.raises(Exception) as caught:
            refresh(str(demo_drops[0]), cfg)
    finally:
        mlflow_proxy.restore()
    said = str(caught.value)
    assert "MLflow" in said and f"127.0.0.1:{mlflow_proxy.port}" in said, said
    assert not list(cfg.paths.quarantine.glob("*"))  # an outage is not the drop's fault
    moved = when == "mlflow-down-in-alias-move"
    assert _state(cfg)[2:4] == ((1, True) if moved else (0, False))
    # Training went on to the end although its checkpoints could not be stored.
    assert [p.name for p in cfg.paths.adapters.iterdir() if p.suffix != ".partial"]
    assert refresh(str(demo_drops[0]), cfg)["promoted"]
    assert _state(cfg) == (1, 1, 1, True, 1)
    assert "promoted_at" in registry.get_champion(cfg).tags
    runs = MlflowClient(registry.tracking_uri(cfg)).search_runs(
        [registry.experiment_id(cfg)], "tags.`freshtune.drop_digest` != ''"
    )
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


# --- Prefect outage mid-cycle ---------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_proxy(tmp_path_factory):
    """A real Prefect server (PostgreSQL) reached through a proxy the test cuts."""
    from urllib.parse import urlparse

    from tests.helpers.servers import TcpProxy, postgres_database, prefect_server

    root = tmp_path_factory.mktemp("prefect-outage")
    with postgres_database("freshtune_pfaults") as db, prefect_server(root, db) as url:
        where = urlparse(url)
        proxy = TcpProxy((where.hostname, where.port))
        yield proxy
        proxy.cut()


@pytest.mark.parametrize("when", [s.id for s in PREFECT_OUTAGES])
def test_prefect_outage(when, prefect_proxy, tiny_config, demo_drops, monkeypatch):

    from freshtune import faults

    api = f"{prefect_proxy.url}/api"
    monkeypatch.setenv("PREFECT_API_URL", api)
    cfg = tiny_config()
    # The engine's own state reports retry for a minute; the cycle must not wait on them.
    with prefect_at(api, PREFECT_CLIENT_MAX_RETRIES=0):
        faults.when("review", prefect_proxy.cut)
        try:
            with pytest.raises(Exception) as caught:
                refresh(str(demo_drops[0]), cfg)
        finally:
            prefect_proxy.restore()
        said = str(servers.named(caught.value))  # what `freshtune refresh` prints
        assert said.startswith(f"Prefect API at {api} did not answer"), said
        assert not list(cfg.paths.quarantine.glob("*"))
        assert _state(cfg)[2:4] == (1, False)  # registered, not promoted: nothing moved
        assert refresh(str(demo_drops[0]), cfg)["promoted"]
    assert _state(cfg) == (1, 1, 1, True, 1)
    runs = MlflowClient(registry.tracking_uri(cfg)).search_runs(
        [registry.experiment_id(cfg)], "tags.`freshtune.drop_digest` != ''"
    )
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]


# --- others -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [s.id for s in OTHERS])
def test_other(case, tiny_config, demo_drops, monkeypatch):
    cfg = tiny_config()
    if case == "nan-loss":
        from tasks.train import TrainingDiverged

        monkeypatch.setenv("FRESHTUNE_FAULT", "train:nan")
        with pytest.raises(TrainingDiverged, match="diverged"):
            refresh(str(demo_drops[0]), cfg)
        assert not _versions(cfg) and not store.keys(cfg, store.ADAPTERS)
        assert not list(cfg.paths.adapters.glob("*"))  # not even a .partial to resume from
        [run] = MlflowClient(registry.tracking_uri(cfg)).search_runs([registry.experiment_id(cfg)])
        assert run.info.status == "FAILED"
        monkeypatch.delenv("FRESHTUNE_FAULT")
        assert refresh(str(demo_drops[0]), cfg)["promoted"]
    elif case == "same-drop-in-review":
        from freshtune.files import file_digest

        key = f"drop-{file_digest(demo_drops[0])[:16]}"
        with claim(key, cfg) as other:  # held as the first run holds it through its review
            assert other is None
            outcome = refresh(str(demo_drops[0]), cfg)
        assert outcome["verdict"] == "in-progress-elsewhere" and not _versions(cfg)
    elif case == "two-drops-at-once":
        _two_drops_at_once(cfg, demo_drops[:2])
    else:
        _rollback_racing_a_promotion(cfg, demo_drops[:2])


def _two_drops_at_once(cfg, drops: list[Path]) -> None:
    done, errors = {}, []

    def run(drop: Path) -> None:
        try:
            done[drop.name] = refresh(str(drop), cfg)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in drops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not errors, errors
    assert [s.sequence for s in list_snapshots(cfg)] == [1, 2]
    versions = _versions(cfg)
    assert len(versions) == 2 and registry.get_champion(cfg).version in versions


def _rollback_racing_a_promotion(cfg, drops: list[Path]) -> None:
    from prefect.concurrency.sync import concurrency

    from tasks.promote import PROMOTION_LIMIT, ensure_promotion_limit, rollback_serialised

    v1, v2 = (refresh(str(d), cfg)["version"] for d in drops)
    ensure_promotion_limit()
    holding, release, done = threading.Event(), threading.Event(), {}

    def promotion_in_progress() -> None:
        with concurrency(PROMOTION_LIMIT, occupy=1, strict=True):
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=promotion_in_progress)
    holder.start()
    assert holding.wait(60)
    rolling = threading.Thread(
        target=lambda: done.update(rollback_serialised(cfg, None, "ops", "test", False))
    )
    rolling.start()
    rolling.join(5)
    assert rolling.is_alive() and registry.get_champion(cfg).version == v2  # queued
    release.set()
    holder.join(60)
    rolling.join(60)
    assert done["to"] == v1 and registry.get_champion(cfg).version == v1


if __name__ == "__main__":
    DOC.write_text(table(), encoding="utf-8")
    sys.stdout.write(f"wrote {DOC}\n")
    os._exit(0)

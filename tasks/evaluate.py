"""Score base, champion and candidate on every eval slice.

Generation is greedy and batched (left padding); each adapter is merged into a freshly loaded
base, one model in memory at a time, so a candidate's generation costs what the base's does and
its answers are those of the merged model `export --merged` serves. Slices:
`current` (this drop), `earlier` (older eval rows whose facts still hold), `general` (questions
the base answers right), `hallucination` (things that do not exist) and `bias`
(counterfactual pairs).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune import faults
from freshtune.config import EvalSettings, FreshtuneConfig
from tasks.chat import answer_and_score
from tasks.evalcache import AnswerCache, Generated, model_digest, question_digest
from tasks.metrics import SliceScore, score
from tasks.mix import current_rows
from tasks.registry import Champion
from tasks.snapshot import Snapshot, earlier_snapshots

log = logging.getLogger(__name__)

SLICES = ("current", "earlier", "general", "hallucination", "bias")
GENERAL_FILE = Path(__file__).resolve().parent.parent / "freshtune" / "data" / "general.jsonl"
Scores = dict[str, dict[str, SliceScore]]


def load_eval_file(path: Path, slice_name: str) -> list[dict[str, Any]]:
    """General or bias questions kept outside the drops, read like a drop."""
    from tasks.curate import normalise_record
    from tasks.ingest import read_drop

    rows = [normalise_record(r) for r in read_drop(path) if r["messages"]]
    return [
        {**r, "split": "eval", "slice": r.get("slice") or slice_name, "drop": f"file:{path.name}"}
        for r in rows
    ]


def eval_slices(
    snapshot: Snapshot, earlier: list[Snapshot], settings: EvalSettings
) -> dict[str, list[dict[str, Any]]]:
    rows = current_rows([*earlier, snapshot], "eval")

    def kind(row: dict[str, Any]) -> str:
        return row.get("slice") or "current"

    slices: dict[str, list[dict[str, Any]]] = {name: [] for name in SLICES}
    for age, row in rows:
        name = "earlier" if kind(row) == "current" and age > 0 else kind(row)
        slices.setdefault(name, []).append(row)
    slices["general"] += load_eval_file(settings.general_file or GENERAL_FILE, "general")
    if settings.bias_file is not None:
        slices["bias"] += load_eval_file(settings.bias_file, "bias")
    return {
        name: rows[: settings.max_questions] if name != "bias" else rows
        for name, rows in slices.items()
    }


def evaluate_models(
    base_model: str,
    adapters: dict[str, Path | None],
    slices: dict[str, list[dict[str, Any]]],
    settings: EvalSettings,
    cache_dir: Path | None = None,
) -> Scores:
    """scores[slice][model] for base and every adapter given (None entries are skipped).

    Answers found in the cache under `cache_dir` (by model and question digest) are reused;
    only the rest are generated, and the weights are not loaded when nothing is missing."""
    models = {"base": None, **{n: p for n, p in adapters.items() if p is not None}}
    digests = {
        name: scored_digest(base_model, path, settings.dtype) for name, path in models.items()
    }
    answers = _answers(base_model, models, digests, slices, settings, AnswerCache(cache_dir))
    return {
        name: {model: _score_rows(rows, name, answers[model], settings) for model in models}
        for name, rows in slices.items()
    }


def scored_digest(base_model: str, adapter: Path | None, dtype: str = "auto") -> str:
    """The answer cache's key of a model as evaluation runs it (an adapter merged in)."""
    from tasks.models import inference_runtime

    runtime = inference_runtime(dtype)
    # Merged and on-the-fly adapters round differently: answers of the one are not the other's.
    return model_digest(base_model, adapter, f"{runtime}-merged" if adapter else runtime)


def _answers(base_model, models, digests, slices, settings, cache) -> dict[str, dict]:
    """answers[model][question digest]: cached ones, then the missing ones generated."""
    questions = {question_digest(r, settings): r for rows in slices.values() for r in rows}
    found = {name: cache.lookup(digests[name], list(questions)) for name in models}
    missing = {name: [questions[k] for k in questions if k not in found[name]] for name in models}
    log.info(
        "evaluation: %d questions; generating %s (the rest cached)",
        len(questions),
        ", ".join(f"{n} {len(m)}" for n, m in missing.items()),
    )
    if any(missing.values()):
        fresh = _generate(base_model, models, missing, settings)
        for name, generated in fresh.items():
            cache.store(digests[name], generated)
            found[name].update(generated)
    return found


def _generate(base_model, models, missing, settings) -> dict[str, dict[str, Generated]]:
    """Every missing answer, under one progress bar for the whole evaluation; one model in
    memory at a time."""
    from tqdm.auto import tqdm

    from tasks.models import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    out = {}
    batches = sum(-(-len(rows) // settings.batch_size) for rows in missing.values())
    with tqdm(total=batches, desc="evaluating", unit="batch", leave=False, disable=False) as bar:
        for name, rows in missing.items():
            if not rows:
                continue
            model = adapted_model(base_model, models[name], settings.dtype)
            scored = answer_and_score(model, tokenizer, rows, settings, bar)
            out[name] = {
                question_digest(r, settings): Generated(a, n, t)
                for r, (a, (n, t)) in zip(rows, scored)
            }
            del model
    return out


def adapted_model(base_model: str, adapter: Path | None, dtype: str = "auto") -> Any:
    """A freshly loaded base, with `adapter` merged into its weights when given: each model's
    answers depend on its own weights only, never on which others were scored before it."""
    from tasks.models import load_inference_model
    from tasks.train import merged_with

    model = load_inference_model(base_model, dtype)
    return (model if adapter is None else merged_with(model, Path(adapter))).eval()


def _score_rows(rows, kind, answers, settings) -> SliceScore:
    if not rows:
        return SliceScore(0, math.nan, math.nan)
    got = [answers[question_digest(r, settings)] for r in rows]
    return score([g.answer for g in got], rows, kind, [(g.nll, g.tokens) for g in got])


def score_metrics(scores: Scores) -> dict[str, float]:
    """Flat MLflow metrics, with deltas of the candidate against the champion and the base."""
    out = {
        f"{s}.{m}.{k}": v
        for s, by_model in scores.items()
        for m, sc in by_model.items()
        if sc.n
        for k, v in sc.metrics().items()
    }
    for slice_, by_model in scores.items():
        cand = by_model.get("candidate")
        for ref in ("base", "champion"):
            if cand and cand.n and ref in by_model:
                out[f"{slice_}.delta_vs_{ref}.accuracy"] = cand.accuracy - by_model[ref].accuracy
    return out


def answers_table(scores: Scores) -> dict[str, list]:
    """One row per (slice, model, question): the evaluation table logged to MLflow."""
    rows = [
        {"slice": s, "model": m, **sample}
        for s, by_model in scores.items()
        for m, sc in by_model.items()
        for sample in sc.samples
    ]
    keys = ["slice", "model", "id", "question", "reference", "answer", "correct"]
    return {k: [r[k] for r in rows] for k in keys}


def score_candidate(
    snapshot: Snapshot, candidate: Path, champion: Champion | None, cfg: FreshtuneConfig
) -> Scores:
    """Every slice of this drop and the earlier ones, for base, champion and candidate."""
    slices = eval_slices(snapshot, earlier_snapshots(cfg, snapshot.digest), cfg.eval)
    adapters = {"champion": champion.adapter_dir if champion else None, "candidate": candidate}
    return evaluate_models(
        cfg.resolved_base_model(), adapters, slices, cfg.eval, cfg.paths.eval_cache
    )


@task(name="evaluate-models", cache_policy=NO_CACHE)
@faults.after("evaluate")
def evaluate_candidate(
    snapshot: Snapshot,
    candidate: Path,
    champion: Champion | None,
    cfg: FreshtuneConfig,
    run_id: str,
) -> Scores:
    """Base, champion and candidate on every slice; metrics and answers go to MLflow."""
    from tasks import registry

    scores = score_candidate(snapshot, candidate, champion, cfg)
    registry.log_metrics(cfg, run_id, score_metrics(scores))
    registry.log_table(cfg, run_id, answers_table(scores), "eval/answers.json")
    log.info(
        "evaluated %s",
        json.dumps(
            {s: {m: round(v.accuracy, 3) for m, v in by.items()} for s, by in scores.items()}
        ),
    )
    return scores

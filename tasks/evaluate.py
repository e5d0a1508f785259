"""Score base, champion and candidate on eval slices, and decide whether the candidate passes.

Generation is greedy and batched (left padding); one base model is loaded and the adapters are
switched on it, so three models cost one set of weights.
"""

from __future__ import annotations

import json
import logging
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import EvalSettings, FreshtuneConfig, GateSettings
from tasks.ingest import prompt_of, response_of
from tasks.mix import current_rows
from tasks.registry import Champion
from tasks.snapshot import Snapshot, earlier_snapshots

log = logging.getLogger(__name__)

MODELS = ("base", "champion", "candidate")
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "$%."})


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation but $ % and decimal points, thousands separators removed."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.casefold())
    text = re.sub(r"\.(?!\d)", " ", text.translate(_PUNCT))
    return " ".join(text.split())


def is_correct(answer: str, reference: str, facts: list[str]) -> bool:
    """Every key fact appears as whole words; without facts, the reference must appear."""
    got = f" {normalise_answer(answer)} "
    wanted = facts or [reference]
    return all(f" {normalise_answer(f)} " in got for f in wanted if normalise_answer(f))


def token_f1(answer: str, reference: str) -> float:
    got, ref = normalise_answer(answer).split(), normalise_answer(reference).split()
    common = sum((Counter(got) & Counter(ref)).values())
    if not got or not ref or not common:
        return float(not got and not ref)
    precision, recall = common / len(got), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass
class SliceScore:
    n: int
    accuracy: float
    token_f1: float
    samples: list[dict[str, str]] = field(default_factory=list)


def score(answers: list[str], rows: list[dict[str, Any]]) -> SliceScore:
    if not rows:
        return SliceScore(0, math.nan, math.nan)
    correct = [is_correct(a, response_of(r) or "", r["facts"]) for a, r in zip(answers, rows)]
    f1 = [token_f1(a, response_of(r) or "") for a, r in zip(answers, rows)]
    samples = [
        {
            "id": r["id"],
            "question": prompt_of(r) or "",
            "reference": response_of(r) or "",
            "answer": a,
            "correct": str(c),
        }
        for a, r, c in zip(answers, rows, correct)
    ]
    return SliceScore(len(rows), sum(correct) / len(rows), sum(f1) / len(rows), samples)


def generate_answers(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], settings: EvalSettings
) -> list[str]:
    """Greedy, batched, deterministic answers to each row's conversation minus its answer."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            r["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    answers: list[str] = []
    batches = range(0, len(prompts), settings.batch_size)
    for start in tqdm(batches, desc="generating", unit="batch", leave=False):
        batch = tokenizer(
            prompts[start : start + settings.batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [a.strip() for a in answers]


def evaluate_models(
    base_model: str,
    adapters: dict[str, Path | None],
    slices: dict[str, list[dict[str, Any]]],
    settings: EvalSettings,
) -> dict[str, dict[str, SliceScore]]:
    """scores[slice][model] for base and every adapter given (None entries are skipped)."""
    from peft import PeftModel

    from tasks.models import load_causal_lm, load_tokenizer
    from tasks.train import check_adapter_fits

    tokenizer = load_tokenizer(base_model)
    model = load_causal_lm(base_model)
    present = {name: path for name, path in adapters.items() if path is not None}
    for i, (name, path) in enumerate(present.items()):
        if i == 0:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
        check_adapter_fits(model, path, adapter_name=name)
    model.eval()
    capped = {k: v[: settings.max_questions] for k, v in slices.items()}
    return {
        name: _score_slice(model, tokenizer, rows, present, settings)
        for name, rows in capped.items()
    }


def _score_slice(model, tokenizer, rows, adapters, settings) -> dict[str, SliceScore]:
    scores = {}
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            scores["base"] = score(generate_answers(model, tokenizer, rows, settings), rows)
    else:
        scores["base"] = score(generate_answers(model, tokenizer, rows, settings), rows)
    for name in adapters:
        model.set_adapter(name)
        scores[name] = score(generate_answers(model, tokenizer, rows, settings), rows)
    return scores


@dataclass(frozen=True)
class GateDecision:
    blessed: bool
    reasons: list[str]
    reference: str

    @property
    def verdict(self) -> str:
        return "BLESSED" if self.blessed else "NOT_BLESSED"


def decide(scores: dict[str, dict[str, SliceScore]], gate: GateSettings) -> GateDecision:
    """The candidate must gain on the new drop and not forget earlier ones (vs the champion,
    or vs the base model when there is no champion yet). A missing or NaN metric fails."""
    current = scores.get("current", {})
    reference = "champion" if "champion" in current else "base"
    reasons = []
    gain = _delta(current, "candidate", reference)
    if math.isnan(gain) or gain < gate.min_gain:
        reasons.append(
            f"current accuracy gain vs {reference} is {gain:+.3f}, "
            f"below gate.min_gain={gate.min_gain:+.3f}"
        )
    earlier = scores.get("earlier", {})
    if earlier.get("candidate") and earlier["candidate"].n:
        loss = -_delta(earlier, "candidate", reference)
        if math.isnan(loss) or loss > gate.max_forgetting:
            reasons.append(
                f"earlier-drops accuracy fell by {loss:.3f} vs {reference}, "
                f"above gate.max_forgetting={gate.max_forgetting:.3f}"
            )
    return GateDecision(not reasons, reasons, reference)


def _delta(slice_scores: dict[str, SliceScore], a: str, b: str) -> float:
    if a not in slice_scores or b not in slice_scores:
        return math.nan
    return slice_scores[a].accuracy - slice_scores[b].accuracy


Scores = dict[str, dict[str, SliceScore]]


def eval_slices(snapshot: Snapshot, earlier: list[Snapshot]) -> dict[str, list[dict[str, Any]]]:
    """`current`: this drop's eval rows; `earlier`: older eval rows whose facts still hold."""
    rows = current_rows([*earlier, snapshot], "eval")
    return {
        "current": [r for age, r in rows if age == 0],
        "earlier": [r for age, r in rows if age > 0],
    }


def score_metrics(scores: Scores) -> dict[str, float]:
    return {
        f"{slice_}.{model}.{metric}": getattr(s, metric)
        for slice_, by_model in scores.items()
        for model, s in by_model.items()
        for metric in ("accuracy", "token_f1")
    }


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_candidate(
    snapshot: Snapshot,
    candidate: Path,
    champion: Champion | None,
    cfg: FreshtuneConfig,
    run_id: str,
) -> Scores:
    """Base, champion and candidate on the new drop's eval set and the earlier ones."""
    from tasks import registry

    slices = eval_slices(snapshot, earlier_snapshots(cfg, snapshot.digest))
    adapters = {"champion": champion.adapter_dir if champion else None, "candidate": candidate}
    scores = evaluate_models(cfg.resolved_base_model(), adapters, slices, cfg.eval)
    registry.log_metrics(cfg, run_id, score_metrics(scores))
    registry.log_text(cfg, run_id, json.dumps(samples_table(scores), indent=1), "eval/answers.json")
    return scores


def samples_table(scores: Scores) -> list[dict[str, str]]:
    return [
        {"slice": slice_, "model": model, **sample}
        for slice_, by_model in scores.items()
        for model, s in by_model.items()
        for sample in s.samples
    ]


@task(name="apply-gate", cache_policy=NO_CACHE)
def apply_gate(scores: Scores, cfg: FreshtuneConfig, run_id: str) -> GateDecision:
    from tasks import registry

    decision = decide(scores, cfg.gate)
    registry.set_tags(
        cfg,
        run_id,
        {"freshtune.gate": decision.verdict, "freshtune.gate_reasons": "; ".join(decision.reasons)},
    )
    log.info("gate: %s %s", decision.verdict, decision.reasons)
    return decision

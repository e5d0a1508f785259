"""Rehearsal: the base model's own answers to everyday prompts, trained beside a drop's rows.

A drop of domain facts alone teaches an adapter to answer everything in the domain's style;
on SmolLM2 a first cycle on such a drop lost 70 points of general accuracy. Rows that hold
the base model's own (greedy) answers to a shipped set of everyday prompts anchor the adapter
to what the base already did outside the domain: self-distillation, needing nothing from the
drop. The set is generated once per base model, prompt file and answer budget, and kept in
the workspace. An answer the base ended within `train.rehearsal_max_tokens` is trained whole;
one it was still writing is kept up to its last whole word as an *open* answer, trained
without the end of its turn: the adapter learns how the base begins it, never to stop there
(dropping such answers kept 27 of 64 prompts; a cut answer trained as finished taught the
model to stop mid-sentence).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from freshtune.config import EvalSettings, FreshtuneConfig
from freshtune.files import file_digest
from tasks.evalcache import model_digest

log = logging.getLogger(__name__)

EVERYDAY_FILE = Path(__file__).resolve().parent.parent / "freshtune" / "data" / "everyday.jsonl"


@dataclass(frozen=True)
class RehearsalSet:
    """Where the rows are and what identifies them (rows travel by path, not in parameters)."""

    path: Path
    digest: str

    def rows(self) -> list[dict[str, Any]]:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def rehearsal_key(base_model: str, prompts: Path, settings: EvalSettings) -> str:
    """Named by what answers (the base's weights, not their folder: workers' workspaces
    differ, and new weights in the same folder answer anew; the numeric runtime), the prompts
    and the answer budget. The name is in every row id, so in the digest of every mix."""
    from tasks.models import inference_runtime

    model = model_digest(base_model, None, inference_runtime(settings.dtype))
    blob = json.dumps([model, file_digest(prompts), settings.max_new_tokens, "open-answers"])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """`{"id", "prompt", "facts"?}` lines (facts: what a right answer must state); a bad line
    is an error naming the file and line."""
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt = {"id": str(record["id"]), "prompt": str(record["prompt"])}
            prompts.append({**prompt, "facts": [str(f) for f in record.get("facts", [])]})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}:{number}: a rehearsal prompt is a JSON object with 'id' and 'prompt' "
                f"({type(exc).__name__}: {exc})"
            ) from None
    return prompts


def base_answers(
    base_model: str, prompts: list[dict[str, Any]], settings: EvalSettings
) -> list[tuple[dict[str, Any], str, bool]]:
    """(prompt, answer, open) for every prompt the base answered right (`keep_usable`),
    generated exactly as evaluation generates (the same `eval` settings)."""
    from tqdm.auto import tqdm

    from tasks.chat import generate_answers
    from tasks.models import load_inference_model, load_tokenizer

    tokenizer = load_tokenizer(base_model)
    rows = [{"messages": _chat(p["prompt"], "")} for p in prompts]
    model = load_inference_model(base_model, settings.dtype).eval()
    batches = -(-len(rows) // settings.batch_size)
    with tqdm(total=batches, desc="rehearsal set", unit="batch", leave=False, disable=False) as bar:
        answers = generate_answers(model, tokenizer, rows, settings, bar)
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    return keep_usable(prompts, answers, lengths, settings.max_new_tokens)


def keep_usable(
    prompts: list[dict[str, Any]], answers: list[str], lengths: list[int], limit: int
) -> list[tuple[dict[str, Any], str, bool]]:
    """(prompt, answer, open) for the answers worth rehearsing. One the model ended itself
    (shorter than the limit: the last token or two of a cut answer may merge when decoded and
    encoded again) is kept whole; a cut one up to its last whole word, marked open. Where the
    prompt names key facts the kept text must state them: rehearsing a base's wrong answer
    trains the error (a demo cycle that rehearsed "A bicycle has 5 wheels." answered "There
    are 5 days in a week.")."""
    from tasks.metrics import is_correct

    kept = []
    for prompt, answer, length in zip(prompts, answers, lengths):
        cut = length >= limit - 1
        text = answer.rsplit(None, 1)[0] if cut and " " in answer.strip() else answer
        facts = prompt.get("facts")
        if (
            text.strip()
            and (not cut or text != answer)
            and (not facts or is_correct(text, "", facts))
        ):
            kept.append((prompt, text, cut))
    return kept


def write_rehearsal(
    base_model: str, prompts_file: Path, out: Path, settings: EvalSettings
) -> RehearsalSet:
    """Generate the set into `out` (written beside it, then renamed) unless it is there."""
    if not out.exists():
        prompts = read_prompts(prompts_file)
        kept = base_answers(base_model, prompts, settings)
        log.info(
            "rehearsal: kept %d of %d base answers (%d open, cut at %d tokens)",
            len(kept),
            len(prompts),
            sum(open_ for _, _, open_ in kept),
            settings.max_new_tokens,
        )
        drop = f"rehearsal-{out.stem}"  # in every row id: another set is another mix
        lines = [json.dumps(_row(p, a, o, drop), ensure_ascii=False) for p, a, o in kept]
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
        partial.replace(out)
    return RehearsalSet(out, out.stem)


def _chat(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _row(prompt: dict[str, Any], answer: str, open_: bool, drop: str) -> dict[str, Any]:
    row = {"id": prompt["id"], "messages": _chat(prompt["prompt"], answer), "drop": drop}
    return {**row, "open": True} if open_ else row


@task(name="build-rehearsal-set", cache_policy=NO_CACHE)
def build_rehearsal(cfg: FreshtuneConfig) -> RehearsalSet | None:
    """The base model's answers to the everyday prompts (`train.rehearsal_file` or the
    shipped set); None when no cycle rehearses (`train.rehearsal_ratio` and
    `train.continue_rehearsal_ratio` 0)."""
    if cfg.train.rehearsal_for(False) == 0 and cfg.train.rehearsal_for(True) == 0:
        return None
    base = cfg.resolved_base_model()
    prompts = cfg.train.rehearsal_file or EVERYDAY_FILE
    settings = cfg.eval.model_copy(update={"max_new_tokens": cfg.train.rehearsal_max_tokens})
    key = rehearsal_key(base, prompts, settings)
    return write_rehearsal(base, prompts, cfg.paths.root / "rehearsal" / f"{key}.jsonl", settings)

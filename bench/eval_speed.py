"""How a candidate's answers are generated: the LoRA adapter applied on the fly, or merged,
and in batches of what size.

Run: python bench/eval_speed.py [--json out.json] [--rounds 2] [--batch-sizes 16,32,64]
     [--skip merged-bf16@64] [--adapter .freshtune/adapters/KEY]
     (about 6 minutes on 2 CPU cores with SmolLM2-135M; leave the bf16
     contender out on cores without AVX512-BF16 or AMX, where it runs many times slower)

A cycle's evaluation pays for the candidate's answers to every question (the base's and the
champion's come from the answer cache). The candidate is the base plus a LoRA adapter on every
linear layer (rank 32 in the demo preset): applied on the fly, each of the 210 adapted
layers adds its own small matmuls to every decoding step; merged into the weights, a step
costs what the base's does. And a decoding step reads every weight once for the whole batch,
so on a CPU a larger batch shares that cost among more questions. Contenders, on the same
questions (80 general questions and the demo drop's month-1 evaluation rows), the same greedy
settings and the same adapter:

  on-the-fly@16  PeftModel with the adapter active, batches of 16 (freshtune before this bench)
  merged@B       a fresh base with the adapter merged in (merge_and_unload), batches of B
  merged-ungrouped@B  merged, rows batched in the order given (before 2026-12-06: evaluation
                 now batches rows with like-length reference answers together)
  merged-generate@B  merged, transformers' `generate` decoding from the scoring pass's cache
                 (evaluation until 2026-12-06: it now decodes itself, `tasks/decode.py`, the
                 beginning a batch's prompts share encoded once and a finished answer's row
                 leaving the batch)
  merged-bf16@B  the same in bfloat16 (`eval.dtype: bfloat16`) at the largest B: fast on cores
                 with AMX or AVX512-BF16, its answers are the bf16 model's, not float32's
  base@B         the base alone at the largest B (the floor)

The adapter's B matrices are small random values, so answers stay close to the base's
(lengths, and so the work, comparable); `--adapter` times a trained one instead (a demo
candidate's answers end sooner, which decoding that lets finished rows go gains from).
Rounds are interleaved; the table shows each contender's median seconds (loading, the
answers and the reference answers' NLL for perplexity: what evaluation pays per model),
questions per second, the ratio to on-the-fly@16,
and how many answers equal on-the-fly@16's (merging and batching change float rounding, not
the model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import freshtune  # noqa: F401  (quiet defaults before prefect/mlflow load)
from bench.checkpoints import require_checkpoint

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / ".freshtune/models/smollm2-135m-instruct"
REFERENCE = "on-the-fly@16"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument("--batch-sizes", default="16,32,64", help="merged contenders' batches")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank (demo preset: 32)")
    parser.add_argument("--config", default="demo", help="preset whose eval settings are used")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--skip", default="", help="contenders to leave out (not the reference)")
    parser.add_argument(
        "--adapter", type=Path, help="a trained adapter folder instead of a random one (--rank)"
    )
    return parser.parse_args(argv)


def questions() -> list[dict[str, Any]]:
    from freshtune.demo_domain import make_drop
    from tasks.curate import normalise_record
    from tasks.evaluate import GENERAL_FILE, load_eval_file

    month = [normalise_record(r) for r in make_drop(1, noise=False) if r["split"] == "eval"]
    return load_eval_file(GENERAL_FILE, "general") + month


def make_adapter(model_dir: str, rank: int, folder: Path) -> Path:
    """A rank-`rank` adapter on every linear layer with small random B (seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tasks.models import load_inference_model

    torch.manual_seed(0)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    model = get_peft_model(load_inference_model(model_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 2e-3)
    model.save_pretrained(str(folder))
    return folder


def contenders(batch_sizes: list[int]) -> list[tuple[str, str, int]]:
    """(name, how the model is built, batch size)."""
    merged = [(f"merged@{b}", "merged", b) for b in batch_sizes]
    widest = max(batch_sizes)
    return [
        (REFERENCE, "on-the-fly", 16),
        *merged,
        (f"merged-ungrouped@{widest}", "merged-ungrouped", widest),
        (f"merged-generate@{widest}", "merged-generate", widest),
        (f"merged-bf16@{widest}", "merged-bf16", widest),
        (f"base@{widest}", "base", widest),
    ]


def load(how: str, model_dir: str, adapter: Path) -> Any:
    """The model a contender generates with: evaluation's own (merged, or the base alone), or
    the adapter applied on the fly, as evaluation did before."""
    from tasks.evaluate import adapted_model

    if how != "on-the-fly":
        dtype = "bfloat16" if how.endswith("-bf16") else "auto"
        return adapted_model(model_dir, adapter if how.startswith("merged") else None, dtype)
    from peft import PeftModel

    from tasks.models import load_inference_model

    return PeftModel.from_pretrained(load_inference_model(model_dir), str(adapter)).eval()


def timed(how, model_dir, adapter, rows, settings) -> tuple[float, list[str]]:
    """Seconds to load, answer and score the reference answers (evaluation's work for one
    model), and the answers."""
    from tasks.chat import answer_and_score
    from tasks.models import load_tokenizer

    started = time.perf_counter()
    model, tokenizer = load(how, model_dir, adapter), load_tokenizer(model_dir)
    grouped, generate = how != "merged-ungrouped", how == "merged-generate"
    scored = answer_and_score(model, tokenizer, rows, settings, grouped=grouped,
                              use_generate=generate)  # fmt: skip
    return time.perf_counter() - started, [a for a, _ in scored]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from freshtune.config import load_config

    settings = load_config(args.config, [f"base_model={args.model}"], Path(tempfile.mkdtemp())).eval
    skip = set(args.skip.split(",")) - {REFERENCE}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    field = [c for c in contenders(sizes) if c[0] not in skip]
    rows = questions()
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in field}
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        adapter = args.adapter or make_adapter(args.model, args.rank, Path(scratch) / "adapter")
        for _ in range(args.rounds):
            for name, how, batch in field:
                at = settings.model_copy(update={"batch_size": batch})
                spent, answers[name] = timed(how, args.model, adapter, rows, at)
                seconds[name].append(spent)
    return figures(seconds, answers, len(rows), args)


def figures(seconds, answers, n: int, args) -> dict[str, Any]:
    median = {c: statistics.median(s) for c, s in seconds.items()}
    reference = answers[REFERENCE]
    return {
        "questions": n,
        "rank": args.rank,
        "adapter": str(args.adapter) if args.adapter else None,
        "rounds": args.rounds,
        "seconds": seconds,
        "median_s": median,
        "vs_reference": {c: s / median[REFERENCE] for c, s in median.items()},
        "same_answers": {c: sum(x == y for x, y in zip(a, reference)) for c, a in answers.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    require_checkpoint(args.model)
    result = run(args)
    n = result["questions"]
    which = f"adapter {args.adapter}" if args.adapter else f"a random LoRA of rank {args.rank}"
    print(f"{n} questions, {which}, median of {args.rounds} interleaved rounds")
    print(f"{'contender':<20}{'seconds':>9}{'q/s':>8}{'vs ' + REFERENCE:>18}{'same answers':>14}")
    for name, s in result["median_s"].items():
        same, ratio = f"{result['same_answers'][name]}/{n}", result["vs_reference"][name]
        print(f"{name:<20}{s:>9.1f}{n / s:>8.2f}{ratio:>17.2f}x{same:>14}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

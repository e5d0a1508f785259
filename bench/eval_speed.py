"""How a candidate's answers are generated: the LoRA adapter applied on the fly, or merged.

Run: python bench/eval_speed.py [--json out.json] [--rounds 3]
     (about 4 minutes on 2 CPU cores with SmolLM2-135M)

A cycle's evaluation pays for the candidate's answers to every question (the base's and the
champion's come from the answer cache). The candidate is the base plus a LoRA adapter on every
linear layer (rank 32 in the demo preset): applied on the fly, each of the 210 adapted
layers adds its own small matmuls to every decoding step; merged into the weights, a step
costs what the base's does. Contenders, on the same questions (80 general questions and the
demo drop's month-1 evaluation rows), the same greedy settings and the same adapter:

  base        the base alone (the floor)
  on-the-fly  PeftModel with the adapter active (freshtune before this bench)
  merged      a fresh base with the adapter merged in (merge_and_unload)

The adapter is a rank-32 adapter whose B matrices are small random values, so answers stay
close to the base's (lengths, and so the work, comparable). Rounds are interleaved; the table
shows each contender's median seconds, questions per second, the ratio to on-the-fly, and how
many answers equal on-the-fly's (merging changes float rounding, not the model).
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
CONTENDERS = ("base", "on-the-fly", "merged")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--rank", type=int, default=32, help="LoRA rank (demo preset: 32)")
    parser.add_argument("--config", default="demo", help="preset whose eval settings are used")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
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


def load(contender: str, model_dir: str, adapter: Path) -> Any:
    from tasks.evaluate import adapted_model
    from tasks.models import load_inference_model

    if contender == "base":
        return load_inference_model(model_dir)
    if contender == "merged":
        return adapted_model(model_dir, adapter)
    from peft import PeftModel

    return PeftModel.from_pretrained(load_inference_model(model_dir), str(adapter)).eval()


def timed(contender, model_dir, adapter, rows, settings) -> tuple[float, list[str]]:
    from tasks.chat import generate_answers
    from tasks.models import load_tokenizer

    started = time.perf_counter()
    model = load(contender, model_dir, adapter)  # loading is part of what a cycle pays
    answers = generate_answers(model, load_tokenizer(model_dir), rows, settings)
    return time.perf_counter() - started, answers


def run(args: argparse.Namespace) -> dict[str, Any]:
    from freshtune.config import load_config

    settings = load_config(args.config, [], Path(tempfile.mkdtemp())).eval
    rows = questions()
    seconds: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        adapter = make_adapter(args.model, args.rank, Path(scratch) / "adapter")
        for _ in range(args.rounds):
            for contender in CONTENDERS:
                spent, answers[contender] = timed(contender, args.model, adapter, rows, settings)
                seconds[contender].append(spent)
    return figures(seconds, answers, len(rows), args)


def figures(seconds, answers, n: int, args) -> dict[str, Any]:
    median = {c: statistics.median(s) for c, s in seconds.items()}
    same = sum(a == b for a, b in zip(answers["merged"], answers["on-the-fly"]))
    return {
        "questions": n,
        "rank": args.rank,
        "rounds": args.rounds,
        "seconds": seconds,
        "median_s": median,
        "merged_vs_on_the_fly": median["merged"] / median["on-the-fly"],
        "base_vs_on_the_fly": median["base"] / median["on-the-fly"],
        "merged_same_answers": same,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    require_checkpoint(args.model)
    result = run(args)
    n = result["questions"]
    print(f"{n} questions, LoRA rank {args.rank}, median of {args.rounds} interleaved rounds")
    print(f"{'contender':<12}{'seconds':>9}{'q/s':>8}{'vs on-the-fly':>15}")
    for name, s in result["median_s"].items():
        ratio = s / result["median_s"]["on-the-fly"]
        print(f"{name:<12}{s:>9.1f}{n / s:>8.2f}{ratio:>14.2f}x")
    print(f"merged answers equal to on-the-fly's: {result['merged_same_answers']} of {n}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

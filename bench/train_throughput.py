"""Training throughput on this machine: freshtune's trainer against its peers, in one run.

Run: python bench/train_throughput.py [--model PATH] [--steps 8] [--rounds 3] [--json out.json]
     [--freshtune-dtype bfloat16]   (freshtune in bf16 autocast; the peers stay as below)
     [--default-turn 0.5]   (half the rows in the template's default system turn, as a cycle's
      rehearsal rows: what freshtune-shared meets in a cycle's mix)
     [--model random:llama-1b --tokenizer PATH]   (a randomly initialised 1B-class Llama:
      weights do not matter for speed; built from a config, nothing downloaded)
     (TRL comes with the `bench` extra: pip install -e '.[bench]'; without it trl is skipped)

Same model, same rows, same LoRA (r=16, alpha 32, all linear layers), same batch size:
  freshtune       tasks.train.fit_adapter (transformers Trainer, length-grouped padded
                  batches; bf16 weights and autocast on a GPU)
  freshtune-shared  the same with train.share_prompt_prefix (batches of one system turn whose
                  shared beginning is computed once; --default-turn mixes two turns)
  freshtune-all-logits  the same trainer, unshared, computing logits at every position of a
                  padded batch, as it did before it kept them from the first trained position
  freshtune-liger the same with train.liger_kernel (fused RMSNorm, SwiGLU, RoPE, linear +
                  cross-entropy; GPU only); freshtune-liger-compile adds train.compile
  freshtune-flex  padding-free batches (train.padding_free, logits only where the assistant's
                  tokens are trained) over flex attention (GPU only)
  trl             TRL SFTTrainer set up as a careful user would for the hardware: fp32 and no
                  gradient checkpointing on a CPU (bf16 on a GPU), prompt/completion rows so only
                  the answer is trained
  trl-default     TRL SFTTrainer with its own defaults (bf16, gradient checkpointing), for
                  information
  plain           a plain transformers + peft loop over padded batches
Throughput counts real (non-padding) tokens over the steps after the first (which pays for
warm-up), and FLOPs on the 4·N basis, against this machine's matmul peak measured in this run
(the best of several shapes, repeats and thread counts; never below what a contender reached)
with the theoretical peak beside it. On a GPU: peak memory per contender.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import freshtune  # noqa: F401  (quiet defaults before prefect/mlflow load)
from bench.checkpoints import require_checkpoint

DEFAULT_MODEL = Path(".freshtune/models/smollm2-135m-instruct")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
LR = 1e-4
CONTENDERS = (
    "freshtune",
    "freshtune-shared",
    "freshtune-all-logits",
    "freshtune-liger",
    "freshtune-liger-compile",
    "freshtune-flex",
    "trl",
    "trl-default",
    "plain",
)
GPU_ONLY = ("freshtune-liger", "freshtune-liger-compile", "freshtune-flex")
# freshtune's variants: the settings each changes.
VARIANTS: dict[str, dict[str, Any]] = {
    "freshtune": {},
    "freshtune-shared": {"share_prompt_prefix": True},
    "freshtune-all-logits": {},  # fit_adapter(all_logits=True)
    "freshtune-liger": {"liger_kernel": True},
    "freshtune-liger-compile": {"liger_kernel": True, "compile": True},
    "freshtune-flex": {"padding_free": True, "attn_implementation": "flex_attention"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint folder")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per contender")
    parser.add_argument("--default-steps", type=int, default=2, help="timed steps, TRL defaults")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out")
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, help="run just these")
    parser.add_argument(
        "--tokenizer", help="tokenizer folder for a random:SPEC model (default: SmolLM2's)"
    )
    parser.add_argument(
        "--freshtune-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="train.dtype for freshtune (auto: fp32 on CPU, as the careful TRL)",
    )
    parser.add_argument(
        "--default-turn",
        type=float,
        default=0.0,
        help="share of rows without their system message (the template's default turn), as "
        "a cycle's rehearsal rows are: 0.5 is a cycle at rehearsal ratio 1",
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    return parser.parse_args(argv)


def demo_rows(n: int, seed: int = 0, default_turn: float = 0.0) -> list[dict[str, Any]]:
    """Train rows of the demo domain (months 1..6), shuffled with a fixed seed; a
    `default_turn` share of them (spread evenly) without their system message."""
    from freshtune.demo_domain import make_drop

    rows = [r for m in range(1, 7) for r in make_drop(m, noise=False) if r["split"] == "train"]
    random.Random(seed).shuffle(rows)
    if len(rows) < n:
        rows = (rows * (n // len(rows) + 1))[:n]
    plain = (
        {round(k / default_turn) for k in range(round(n * default_turn))} if default_turn else set()
    )
    return [
        {"id": str(i), "messages": r["messages"][1:] if i in plain else r["messages"]}
        for i, r in enumerate(rows[:n])
    ]


def steady_rate(marks: list[tuple[float, int]]) -> tuple[float, int, float]:
    """Tokens/s between the end of the first step and the end of the last one."""
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0


def run_freshtune(
    model: str, rows: list[dict], args: argparse.Namespace, variant: str = "freshtune"
) -> list[tuple]:
    from freshtune.config import TrainSettings
    from tasks.train import fit_adapter

    settings = TrainSettings(
        **VARIANTS[variant],
        epochs=1,
        learning_rate=LR,
        batch_size=args.batch_size,
        max_length=args.max_length,
        warmup=0.0,
        logging_steps=1,
        lora=LORA,
        dtype=args.freshtune_dtype,
    )
    marks: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        fit_adapter(
            model,
            rows,
            settings,
            None,
            0,
            Path(tmp),
            on_log=lambda m, step: marks.append((time.perf_counter(), int(m["tokens"]))),
            all_logits=variant == "freshtune-all-logits",
        )
    return marks


def _timing_callback(marks: list[tuple[float, int]]) -> Any:
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    return Timing()


def run_trl(model: str, rows: list[dict], args: argparse.Namespace, careful: bool) -> list:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tasks.models import load_causal_lm, load_tokenizer

    on_gpu = torch.cuda.is_available()
    data = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    )
    tuned = {"bf16": on_gpu, "gradient_checkpointing": False} if careful else {}
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=LR,
        max_length=args.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not on_gpu,
        include_num_input_tokens_seen="non_padding",
        **tuned,
    )
    marks: list[tuple[float, int]] = []
    trainer = SFTTrainer(
        model=load_causal_lm(model),
        args=config,
        train_dataset=data,
        processing_class=load_tokenizer(model),
        peft_config=LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear"
        ),
        callbacks=[_timing_callback(marks)],
    )
    trainer.train()
    return marks


def run_plain(model: str, rows: list[dict], args: argparse.Namespace) -> list[tuple]:
    """A plain loop: right-padded batches, AdamW on the LoRA weights (bf16 autocast on GPU)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tasks.models import load_causal_lm, load_tokenizer
    from tasks.train import build_dataset, collate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(model)
    peft = get_peft_model(
        load_causal_lm(model),
        LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear"),
    ).to(device)
    peft.train()
    data = build_dataset(tokenizer, rows, args.max_length).to_list()
    pad = collate(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=LR)
    marks, seen = [], 0
    for start in range(0, len(data) - args.batch_size + 1, args.batch_size):
        batch = {k: v.to(device) for k, v in pad(data[start : start + args.batch_size]).items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            peft(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seen += int(batch["attention_mask"].sum())
        _sync(device)
        marks.append((time.perf_counter(), seen))
    return marks


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def resolve_model(args: argparse.Namespace) -> str:
    """A checkpoint folder; `random:SPEC` builds one from a config (bench/random_models.py)."""
    if not args.model.startswith("random:"):
        return require_checkpoint(args.model, "or pass --model PATH, or --model random:llama-1b")
    from bench.random_models import build_random_model

    tokenizer = args.tokenizer or str(DEFAULT_MODEL)
    spec = args.model.removeprefix("random:")
    return str(build_random_model(spec, Path(tokenizer), Path(tempfile.gettempdir())))


def measure(run: Callable[[list[dict]], list], rows: list[dict]) -> tuple[float, int, float, float]:
    """(tokens/s, tokens, seconds, peak GPU memory in GiB: NaN on the CPU)."""
    import torch

    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rate, tokens, seconds = steady_rate(run(rows))
    memory = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else math.nan
    return rate, tokens, seconds, memory


def contenders(args: argparse.Namespace, model: str) -> dict[str, Callable[[list[dict]], list]]:
    import importlib.util

    import torch

    runs: dict[str, Callable[[list[dict]], list]] = {
        name: (lambda rows, name=name: run_freshtune(model, rows, args, name)) for name in VARIANTS
    }
    runs["trl"] = lambda rows: run_trl(model, rows, args, careful=True)
    runs["trl-default"] = lambda rows: run_trl(model, rows, args, careful=False)
    runs["plain"] = lambda rows: run_plain(model, rows, args)
    wanted = [n for n in (args.only or CONTENDERS) if n not in args.skip]
    if not torch.cuda.is_available():
        wanted = [n for n in wanted if n not in GPU_ONLY]
    if importlib.util.find_spec("trl") is None and {"trl", "trl-default"} & set(wanted):
        print("trl not installed: skipping it (pip install -e '.[bench]' to compare)")
        wanted = [n for n in wanted if not n.startswith("trl")]
    return {name: runs[name] for name in wanted}


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tasks.models import load_causal_lm
    from tasks.throughput import flops_per_token, measure_peak

    args.model = resolve_model(args)
    per_token = flops_per_token(load_causal_lm(args.model))
    on_gpu = torch.cuda.is_available()
    peak = measure_peak("cuda" if on_gpu else "cpu", "bfloat16" if on_gpu else "float32")
    runs = contenders(args, args.model)
    # Rounds interleave the contenders and each keeps its best round: on a shared machine a
    # burst of someone else's work then hits them all alike instead of one of them.
    results: dict[str, tuple[float, int, float, float]] = {}
    failed: dict[str, str] = {}
    for round_ in range(args.rounds):
        for name, run in runs.items():
            if name == "trl-default" and round_ > 0:
                continue
            steps = args.default_steps if name == "trl-default" else args.steps
            rows = demo_rows((steps + 1) * args.batch_size, round_, args.default_turn)
            try:
                measured = measure(run, rows)
            except Exception as exc:  # one contender's failure must not hide the others'
                print(f"round {round_ + 1} {name}: FAILED {type(exc).__name__}: {exc}")
                failed[name] = f"{type(exc).__name__}: {exc}"[:500]
                continue
            if name not in results or measured[0] > results[name][0]:
                results[name] = measured
            print(f"round {round_ + 1} {name}: {measured[0]:.1f} tokens/s", flush=True)
            figures = summarise(results, per_token, peak) | {"failed": failed}
            if args.json:  # after every contender: a run cut short keeps what it measured
                args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    figures = summarise(results, per_token, peak) | {"failed": failed}
    print_table(results, per_token, figures)
    return figures


def summarise(results: dict, per_token: float, peak: Any) -> dict[str, Any]:
    from tasks.throughput import effective_peak

    rate = {name: r[0] for name, r in results.items()}
    best = max((r * per_token for r in rate.values()), default=0.0)
    denominator = effective_peak(peak.flops, best)
    figures: dict[str, Any] = {
        "flops_per_token": per_token,
        "matmul_peak_gflops": peak.flops / 1e9,
        "matmul_peak_shape": list(peak.shape),
        "matmul_peak_threads": peak.threads,
        "peak_used_gflops": denominator / 1e9,
        "theoretical_peak_gflops": peak.theoretical / 1e9,
        "theoretical_basis": peak.basis,
        "measured_share_of_theoretical": peak.share_of_theory(),
    }
    for name, (tok_s, _, _, memory) in results.items():
        key = name.replace("-", "_")
        figures[f"{key}_tok_s"] = tok_s
        figures[f"{key}_share_of_peak"] = tok_s * per_token / denominator
        figures[f"{key}_peak_memory_gib"] = memory
    if "trl" in rate and "freshtune" in rate:
        figures["ratio_vs_trl"] = rate["freshtune"] / rate["trl"]
    # Names kept from earlier runs of this bench.
    figures["trl_defaults_tok_s"] = figures.pop("trl_default_tok_s", math.nan)
    figures["share_of_peak"] = figures.get("freshtune_share_of_peak", math.nan)
    return figures


def print_table(results: dict, per_token: float, figures: dict) -> None:
    peak = figures["peak_used_gflops"]
    print(
        f"\nmatmul peak {figures['matmul_peak_gflops']:.1f} GFLOP/s measured "
        f"(shape {tuple(figures['matmul_peak_shape'])}, {figures['matmul_peak_threads']} threads), "
        f"theoretical {figures['theoretical_peak_gflops']:.1f} ({figures['theoretical_basis']}); "
        f"4·N = {per_token / 1e6:.0f} MFLOP per token"
    )
    if peak > figures["matmul_peak_gflops"] * 1.0001:
        print(f"a contender beat the measured peak: shares are against {peak:.1f} GFLOP/s")
    reference = results.get("trl", (math.nan,))[0]
    header = ("trainer", "tokens", "s", "tokens/s", "vs trl", "GFLOP/s", "peak", "mem GiB")
    width = max(16, *map(len, results))
    print(f"{{:<{width}}} {{:>7}} {{:>7}} {{:>9}} {{:>7}} {{:>8}} {{:>6}} {{:>8}}".format(*header))
    for name, (rate, tokens, seconds, memory) in results.items():
        gflops = rate * per_token / 1e9
        versus = "-" if math.isnan(reference) else f"{rate / reference:.2f}x"
        print(
            f"{name:<{width}} {tokens:>7} {seconds:>7.1f} {rate:>9.1f} {versus:>7} "
            f"{gflops:>8.1f} {gflops / peak:>6.1%} {memory:>8.1f}"
        )


if __name__ == "__main__":
    arguments = parse_args()
    figures = main(arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")

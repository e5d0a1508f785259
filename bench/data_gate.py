"""The data gate on a million rows: read, GX validation and each curation step, timed.

Run: python bench/data_gate.py [--rows 1000000] [--peer-rows 20000] [--json out.json]
                               [--against earlier.json]
     (not run in CI). A million rows on 2 shared cores: 65-85 s and 1.9 GB peak resident
     memory (the drop's records as columns 0.55 GB, GX's and pandas' code 0.27 GB, the
     curated rows as dicts 0.7 GB); with the records as dicts 2.5 GB, and before the gate read
     in blocks and validated in chunks, 4.1 GB.

Rows are synthetic chat pairs (random words from a 5,000-word vocabulary with 2% prices and
data caps, 8-40 words per turn) with planted dirt: 2% exact duplicates, 2% near duplicates
(one word changed), 1% PII, 1% empty answers, 5% eval rows and 0.5% eval prompts copied
into training. Drift is measured against 100,000 "earlier" rows. The peer is the reference
near-dup implementation, datasketch (MinHash per row + MinHashLSH), on `--peer-rows` rows of
the same data; its rows/s are compared with freshtune's near-dup step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from freshtune.config import DataSettings, load_config

PII = ["mail jane.doe@example.com", "call +44 20 7946 0958", "card 4111 1111 1111 1111"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Synthetic drop rows as written in a JSONL file."""
    words = random.Random(0)  # one vocabulary for every seed, so drift compares like with like
    letters = "etaoinshrdlucmfwyp"
    vocab = ["".join(words.choices(letters, k=words.randint(2, 9))) for _ in range(4900)]
    vocab += [f"${words.randint(5, 99)}" for _ in range(50)]
    vocab += [f"{words.randint(1, 50)}GB" for _ in range(50)]
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choices(vocab, k=k))

    rows: list[dict] = []
    for i in range(n):
        roll = rng.random()
        split = "eval" if roll < 0.05 else "train"
        prompt, answer = words(rng.randint(8, 25)) + "?", words(rng.randint(8, 40)) + "."
        if rows and 0.05 <= roll < 0.07:  # exact duplicate of an earlier row
            prev = rows[rng.randrange(len(rows))]
            prompt, answer, split = prev["prompt"], prev["response"], prev["split"]
        elif rows and 0.07 <= roll < 0.09:  # near duplicate: one word changed
            prev = rows[rng.randrange(len(rows))]
            tokens = prev["response"].split() or ["."]
            tokens[rng.randrange(len(tokens))] = rng.choice(vocab)
            prompt, answer, split = prev["prompt"], " ".join(tokens), prev["split"]
        elif 0.09 <= roll < 0.10:
            answer = f"{answer} {rng.choice(PII)}"
        elif 0.10 <= roll < 0.11:
            answer = ""
        rows.append({"id": f"r{i}", "prompt": prompt, "response": answer, "split": split})
    evals = [r for r in rows if r["split"] == "eval"]
    for _ in range(n // 200):  # eval prompts copied into training
        rows[rng.randrange(n)].update(prompt=rng.choice(evals)["prompt"], split="train")
    return rows


def timed(label: str, fn, times: dict[str, float]):
    start = time.perf_counter()
    out = fn()
    times[label] = time.perf_counter() - start
    return out


def peer_near_dup(texts: list[str], threshold: float, num_perm: int) -> float:
    """datasketch: MinHash over the same word bigrams, MinHashLSH query-then-insert; seconds."""
    import re

    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, text in enumerate(texts):
        tokens = re.sub(r"[^\w\s]+", " ", text.lower()).split()
        mh = MinHash(num_perm=num_perm)
        mh.update_batch([f"{a} {b}".encode() for a, b in itertools.pairwise(tokens)])
        if not lsh.query(mh):
            lsh.insert(str(i), mh)
    return time.perf_counter() - start


def write_drop(n: int, path: Path) -> list[tuple[str, str]]:
    """The drop's file, and the earlier rows' (prompt, response) pairs for drift."""
    rows = make_rows(n)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return [(r["prompt"], r["response"]) for r in make_rows(100_000, seed=1)]


def generated(n: int, path: Path) -> list[tuple[str, str]]:
    """`write_drop` in a child process: the million generated dicts never count toward the
    gate's peak memory (freed memory is not always given back to the system)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(write_drop, n, path).result()


def peak_mb() -> float:
    """Peak resident memory of this process since start (or since `reset_peak`), MB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except OSError:  # not Linux: getrusage counts from the start (KB on Linux, bytes on macOS)
        scale = 2**20 if sys.platform == "darwin" else 2**10
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def reset_peak() -> None:
    """Linux: restart the peak count, so each stage's peak is its own (best effort)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def measured(label: str, fn, times: dict[str, float], peaks: dict[str, float]):
    reset_peak()
    out = timed(label, fn, times)
    peaks[label] = peak_mb()
    return out


def run(n: int, peer_rows: int) -> dict:
    from tasks.curate import Earlier, curate
    from tasks.ingest import read_drop
    from tasks.validate import validate_records

    cfg = load_config("demo", ["data.min_rows=1", "data.max_line_kb=1024"], tempfile.mkdtemp())
    times: dict[str, float] = {}
    peaks: dict[str, float] = {}
    path = Path(tempfile.mkdtemp()) / "bench.jsonl"
    pairs = timed("generate (not part of the gate)", lambda: generated(n, path), times)
    earlier = Earlier(pairs=pairs)
    cpu_start = time.process_time()  # CPU seconds: what the gate costs, whatever else runs
    records = measured("read JSONL (strict UTF-8)", lambda: read_drop(path), times, peaks)
    shutil.rmtree(path.parent)  # a million rows are 325 MB of /tmp
    report = measured(
        "validate (GX suite)", lambda: validate_records(records, path, cfg), times, peaks
    )
    _, curation = measured(
        "curate", lambda: curate(records, settings=cfg.data, earlier=earlier), {}, peaks
    )
    cpu_s = time.process_time() - cpu_start
    gate = {k: v for k, v in times.items() if not k.startswith("generate")}
    gate.update({f"curate: {k}": v for k, v in curation.seconds.items()})
    peer = records[:peer_rows]
    texts = [f"{r['messages'][0]['content']}\n{r['messages'][1]['content']}" for r in peer]
    peer_s = peer_near_dup(texts, cfg.data.near_dup_threshold, 64)
    return {
        "rows": n,
        "cores": os.cpu_count(),
        "seconds": gate,
        "total_s": sum(gate.values()),
        "peak_mb": peaks,
        "gate_peak_mb": max(peaks.values()),
        "cpu_s": cpu_s,
        "load_average": os.getloadavg(),
        "validation_success": report.success,
        "removed": dict(curation.removed),
        "pii": dict(curation.pii),
        "drift": curation.drift and curation.drift.summary(),
        "peer_near_dup_rows_per_s": peer_rows / peer_s,
        "near_dup_rows_per_s": n / curation.seconds["near_dedupe"],
    }


def print_table(result: dict, before: dict | None = None) -> None:
    """Seconds per step and peak memory per stage; with `before` (an earlier --json of the
    same machine and rows), each figure's ratio to it."""
    n, old = result["rows"], before or {}

    def ratio(new: float, was: float | None) -> str:
        return f"{new / was:>8.2f}x" if was else ""

    print(f"\n{n:,} rows on {result['cores']} cores{' (ratios: now / before)' if old else ''}")
    print(f"{'step':<34}{'seconds':>10}{'rows/s':>14}")
    for step, seconds in result["seconds"].items():
        was = old.get("seconds", {}).get(step)
        print(f"{step:<34}{seconds:>10.2f}{n / max(seconds, 1e-9):>14,.0f}{ratio(seconds, was)}")
    total = result["total_s"]
    print(f"{'total':<34}{total:>10.2f}{n / total:>14,.0f}{ratio(total, old.get('total_s'))}")
    print(f"\n{'peak memory (resident)':<34}{'MB':>10}")
    for stage, mb in result["peak_mb"].items():
        print(f"{stage:<34}{mb:>10,.0f}{ratio(mb, old.get('peak_mb', {}).get(stage))}")
    gate_mb = result["gate_peak_mb"]
    print(f"{'gate':<34}{gate_mb:>10,.0f}{ratio(gate_mb, old.get('gate_peak_mb'))}")
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    print(f"CPU time of the gate: {result['cpu_s']:.1f} s (load average at the end: {load})")
    ours, peer = result["near_dup_rows_per_s"], result["peer_near_dup_rows_per_s"]
    print(f"\nnear-dup: {ours:,.0f} rows/s vs datasketch {peer:,.0f} rows/s ({ours / peer:.0f}x)")
    print(f"removed {result['removed']}\nPII {result['pii']}\ndrift {result['drift']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--peer-rows", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--against", type=Path, help="an earlier --json to compare with")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    assert DataSettings().near_dup_num_perm == 64  # the peer uses the same permutation count
    result = run(args.rows, min(args.peer_rows, args.rows))
    before = json.loads(args.against.read_text(encoding="utf-8")) if args.against else None
    print_table(result, before)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()

"""The data gate on a million rows: read, GX validation and each curation step, timed.

Run: python bench/data_gate.py [--rows 1000000] [--peer-rows 20000] [--json out.json]
     (not run in CI; under a minute and about 4 GB of memory for a million rows)

Rows are synthetic chat pairs (random words from a 5,000-word vocabulary with 2% prices and
data caps, 8-40 words per turn) with planted dirt: 2% exact duplicates, 2% near duplicates
(one word changed), 1% PII, 1% empty answers, 5% eval rows and 0.5% eval prompts copied
into training. Drift is measured against 100,000 "earlier" rows. The peer is the reference
near-dup implementation, datasketch (MinHash per row + MinHashLSH), on `--peer-rows` rows of
the same data; its rows/s are compared with freshtune's near-dup step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
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


def run(n: int, peer_rows: int) -> dict:
    from tasks.curate import Earlier, curate
    from tasks.ingest import read_drop
    from tasks.validate import validate_records

    cfg = load_config("demo", ["data.min_rows=1", "data.max_line_kb=1024"], tempfile.mkdtemp())
    times: dict[str, float] = {}
    rows = timed("generate (not part of the gate)", lambda: make_rows(n), times)
    path = Path(tempfile.mkdtemp()) / "bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    earlier_rows = make_rows(100_000, seed=1)
    earlier = Earlier(pairs=[(r["prompt"], r["response"]) for r in earlier_rows])
    del rows, earlier_rows
    cpu_start = time.process_time()  # CPU seconds: what the gate costs, whatever else runs
    records = timed("read JSONL (strict UTF-8)", lambda: read_drop(path), times)
    report = timed("validate (GX suite)", lambda: validate_records(records, path, cfg), times)
    _, curation = curate(records, settings=cfg.data, earlier=earlier)
    cpu_s = time.process_time() - cpu_start
    gate = {k: v for k, v in times.items() if not k.startswith("generate")}
    gate.update({f"curate: {k}": v for k, v in curation.seconds.items()})
    texts = [f"{r['messages'][0]['content']}\n{r['messages'][1]['content']}" for r in records]
    peer_s = peer_near_dup(texts[:peer_rows], cfg.data.near_dup_threshold, 64)
    return {
        "rows": n,
        "cores": os.cpu_count(),
        "seconds": gate,
        "total_s": sum(gate.values()),
        "cpu_s": cpu_s,
        "load_average": os.getloadavg(),
        "validation_success": report.success,
        "removed": dict(curation.removed),
        "pii": dict(curation.pii),
        "drift": curation.drift and curation.drift.summary(),
        "peer_near_dup_rows_per_s": peer_rows / peer_s,
        "near_dup_rows_per_s": n / curation.seconds["near_dedupe"],
    }


def print_table(result: dict) -> None:
    n = result["rows"]
    print(f"\n{n:,} rows on {result['cores']} cores")
    print(f"{'step':<34}{'seconds':>10}{'rows/s':>14}")
    for step, seconds in result["seconds"].items():
        print(f"{step:<34}{seconds:>10.2f}{n / max(seconds, 1e-9):>14,.0f}")
    print(f"{'total':<34}{result['total_s']:>10.2f}{n / result['total_s']:>14,.0f}")
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
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    assert DataSettings().near_dup_num_perm == 64  # the peer uses the same permutation count
    result = run(args.rows, min(args.peer_rows, args.rows))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()

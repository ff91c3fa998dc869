"""Time validating preference pairs end to end (read, normalize, every rule incl. the similarity filter, build the
Dataset), against the issue's budget: 100,000 pairs in under 30 s on a 2-core machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_validate.py [--rows 100000] [--conversational] [--workers 1]

The synthetic pairs look like real ones: answers of 200-1,500 (chosen) and 100-1,000 (rejected) characters
of English-like words; 10% near-copies (too similar), 2% exact duplicates, 3% too short, 1% empty.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from dpo_recipes.data import ValidationConfig, load_preference_data
from dpo_recipes.data.formats import apply_column_map, detect_format, normalize
from dpo_recipes.data.readers import read_rows
from dpo_recipes.data.validate import run_rules

WORDS = ("the model answer question because which however data training preference pair reward policy value "
         "should would could about between through during before after language response user assistant "
         "example explain reason result first second third finally important consider therefore").split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    target = rng.randint(lo, hi)
    out, n = [], 0
    while n < target:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out).capitalize() + "."


def make_rows(n: int, conversational: bool, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"Question {i}: " + _text(rng, 40, 300)
        chosen, rejected = _text(rng, 200, 1500), _text(rng, 100, 1000)
        u = rng.random()
        if u < 0.10:  # near-copy: a few words changed
            words = chosen.split()
            for _ in range(max(1, len(words) // 50)):
                words[rng.randrange(len(words))] = rng.choice(WORDS)
            rejected = " ".join(words)
        elif u < 0.12 and rows:
            rows.append(rows[-1])
            continue
        elif u < 0.15:
            chosen = chosen[:30]
        elif u < 0.16:
            rejected = " "
        if conversational:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}], "source": "bench"})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--conversational", action="store_true", help="the project's default conversational JSONL")
    ap.add_argument("--workers", type=int, default=1, help="rapidfuzz threads (-1 = all cores)")
    args = ap.parse_args()

    rows = make_rows(args.rows, args.conversational)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        with path.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        size_mb = path.stat().st_size / 1e6
        cfg = ValidationConfig(workers=args.workers)

        t0 = time.perf_counter()
        raw = read_rows(str(path))
        t1 = time.perf_counter()
        columns = apply_column_map(raw, {})
        norm = normalize(raw, columns, detect_format(raw, columns))
        t2 = time.perf_counter()
        _, report = run_rules(norm, raw, config=cfg)
        t3 = time.perf_counter()
        del raw, norm

        t4 = time.perf_counter()
        result = load_preference_data(str(path), config=cfg)
        total = time.perf_counter() - t4

    print(f"{args.rows:,} pairs ({'conversational' if args.conversational else 'plain'}), {size_mb:.0f} MB JSONL, "
          f"similarity filter on (max {cfg.max_similarity}), rapidfuzz workers={args.workers}")
    print(f"  read       {t1 - t0:6.2f} s")
    print(f"  normalize  {t2 - t1:6.2f} s")
    print(f"  rules      {t3 - t2:6.2f} s   ({args.rows / (t3 - t2):,.0f} rows/s)")
    print(f"  end to end {total:6.2f} s   ({args.rows / total:,.0f} rows/s)  "
          f"load_preference_data incl. building the Dataset")
    print(f"  kept {result.report.kept:,}; dropped " + ", ".join(
        f"{k} {v:,}" for k, v in result.report.dropped.items() if v))
    print(f"  budget 30 s: {'PASS' if total < 30 else 'FAIL'}")


if __name__ == "__main__":
    main()

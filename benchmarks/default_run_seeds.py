"""The default run at several seeds, one after another, and the per-seed table the README and docs/default-run.md show.

    python benchmarks/default_run_seeds.py                          # seeds 0-3, the shipped config (~4 min a seed)
    python benchmarks/default_run_seeds.py --seeds 0 1 -- --bf16 false --dataset_name my/train.jsonl

Everything after `--` goes to `recipes/dpo_lora.py` as it is. Each seed runs in its own process into
`--out`/seed-N; the figures are the run's own `summary.json` (held-out identity per script, general answers that name
the identity, looping answers before and after, general KL) and the wall time of the whole command. The table's
first line names the machine: CPU, whether it multiplies bf16 in hardware, the run's precision and versions.
Run it alone: two runs at once on a 2-core machine slow each other down.

Each seed starts from an empty reference cache (`--out`/seed-N.reference-cache), as a first run does, so a rerun repeats the
table. With the shared cache (`--shared-reference-cache`), a seed reuses the reference log-probs other runs computed
for its pairs in their batches; in bf16 those differ in the last bits from its own batches' values, enough to move
a prompt or a leak, so the figures depend on what ran before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dpo_recipes.config.presets import cpu_has_fast_bf16

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "dpo_lora.py"
CONFIG = ROOT / "recipes" / "configs" / "dpo_lora.yaml"
SCRIPTS = (("other", "identity, English"), ("cjk", "identity, Chinese"))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def row_for(seed: int, run_dir: Path, wall: float) -> tuple[list[str], dict]:
    """The table's cells for one seed's run, and its summary."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if summary.get("heldout_identity_rate_after") is None:
        sys.exit(f"{run_dir}/summary.json has no held-out identity figures: run with --eval_prompts_file and "
                 "--identity_name (the shipped config sets both)")
    # per script when the prompts mix English and Chinese, else one rate over all identity prompts
    rates = summary.get("heldout_identity_rate_after_by_script") or {"other": summary["heldout_identity_rate_after"]}
    n = summary.get("n_identity_prompts_by_script") or {"other": summary["n_identity_prompts"]}
    cells = [str(seed)]
    for script, _ in SCRIPTS:
        cells.append(f"{round(rates[script] * n[script])} / {n[script]}" if n.get(script) else "-")
    cells += [f"{summary['general_identity_leaks_after']} / {summary['n_general_prompts']}",
              f"{summary['degenerate_answers_before']} → {summary['degenerate_answers_after']}"
              + (f" ({summary['degenerate_answers_added']} new)" if "degenerate_answers_added" in summary else ""),
              f"{summary['general_kl_per_token']:.3f}" if summary.get("general_kl_per_token") is not None else "-",
              f"{summary['train_seconds']:.0f} s", f"{wall:.0f} s"]
    return cells, summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default="outputs/default-run-seeds", help="one folder per seed goes in here")
    parser.add_argument("--shared-reference-cache", action="store_true",
                        help="use the machine's reference cache instead of an empty one per seed (faster, and the "
                             "figures then depend on what ran before)")
    args = parser.parse_args(own)

    header = ["seed", *(title for _, title in SCRIPTS), "general answers naming the identity",
              "looping answers, before → after (new: loops the run made)", "general KL (nats/token)", "training",
              "whole command"]
    rows, summary = [], {}
    for seed in args.seeds:
        run_dir = Path(args.out) / f"seed-{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # this script's own folder: a rerun measures a fresh run
        command = [sys.executable, str(RECIPE), "--config", str(CONFIG), "--seed", str(seed),
                   "--output_dir", str(run_dir.resolve()), "--plots", "false", *extra]
        print(f"seed {seed}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        log = Path(args.out) / f"seed-{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if not args.shared_reference_cache:
            cache = Path(args.out) / f"seed-{seed}.reference-cache"
            shutil.rmtree(cache, ignore_errors=True)
            env["DPO_RECIPES_REFERENCE_CACHE"] = str(cache.resolve())
        with open(log, "w", encoding="utf-8") as f:
            code = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  check=False).returncode
        wall = time.perf_counter() - start
        if code != 0:
            print(f"seed {seed} failed (exit {code}); its output is in {log}", file=sys.stderr)
            return code
        cells, summary = row_for(seed, run_dir, wall)
        rows.append(cells)
        print("  " + "  ".join(f"{h}: {c}" for h, c in zip(header[1:], cells[1:])), flush=True)

    versions = summary.get("versions", {})
    print(f"\n{cpu_name()}, {'with' if cpu_has_fast_bf16() else 'without'} hardware bf16, {summary.get('precision')}; "
          + ", ".join(f"{k} {versions[k]}" for k in ("torch", "trl", "transformers") if k in versions)
          + (f"; recipe flags: {' '.join(extra)}" if extra else ""))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
